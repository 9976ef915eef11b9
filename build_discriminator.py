"""
build_discriminator.py — build (or reuse) a relevance discriminator for a policy and a rubric dataset, and measure it.

Paper:    RTT §3 (Token-Level Relevance Discriminator) and its appendix (minimal pairs); RTT_SPEC.md §4.
Input:    Rubric World's minimal pairs (rubric_world.py: both sides of every pair, labels from the token diff)
Output:   a token classifier saved with discriminator.save_discriminator in cache/toy/discriminator (or
          $RTT_CACHE/toy/discriminator), rebuilt only when its settings, instruction, tokenizer or data change;
          a report: precision / recall / F1 at 0.5, AUROC and top-1 of violated rubrics, per rubric type and
          side, on held-out prompts and on rubric combinations never seen in training, beside the uniform,
          random and greedy-quote baselines; a heat map of one response (terminal, HTML, PNG).

Identifiable labels.  Some diff labels cannot be recovered from one response (RTT_SPEC §4 trap 2: the filler
          that replaced a required word is a random word); they are reported apart as "not_identifiable".

Deviations (numbered as in the README's list):
  5. A tiny encoder trained on programmatic minimal pairs stands in for a fine-tuned LLM (discriminator.py).

Run:      python build_discriminator.py --json results/discriminator.json --heatmap results/heatmap.png
"""

import argparse
import hashlib
import html
import json
import os
import time
from collections import defaultdict

import torch
from tqdm import tqdm
from transformers import AutoTokenizer

import policies
import rubric_world
import tasks
from checker_edits import MAX_CALLS, label_pair, minimal_edit
from discriminator import (INFERENCE_BATCH_TOKENS, INSTRUCTION, META_FILE, build_toy_discriminator, load_discriminator,
                           make_relevance_fn, predict_examples, relevance, save_discriminator, token_metrics,
                           train_discriminator, vocab_fingerprint)
from files import read_jsonl, write_json, write_jsonl, write_text
from rollout import encode_prompts, generate

REPO_ROOT = os.path.dirname(os.path.abspath(__file__))

# DEVIATION(5): a tiny encoder trained on programmatic minimal pairs stands in for a fine-tuned LLM.
# Matching a rubric's word to the same word in the response (include, exclude, order) needs the long run: on
# identifiable test labels F1 0.75 after 1000 steps at lr 3e-3, 0.92 with these settings (lr 2e-3 was faster on
# one thread and much worse on two: 0.94 vs 0.79). A 256-wide feed-forward layer reached 0.98 but made
# relevance inference 1.3x slower (README, Speed).
TOY_SETTINGS = dict(backbone="bidirectional", hidden=64, layers=2, heads=4, intermediate=128, steps=3000,
                    batch_size=64, lr=1e-3, seed=0, data_seed=0)


def default_cache_dir() -> str:
    """cache/toy/discriminator under the repository root, or $RTT_CACHE/toy/discriminator when RTT_CACHE is set."""
    return os.path.join(os.environ.get("RTT_CACHE") or os.path.join(REPO_ROOT, "cache"), "toy", "discriminator")


def data_fingerprint(examples: list[dict]) -> str:
    """A short hash of examples' inputs and labels: a cached model trained on other data is not reused."""
    rows = [(e["description"], e["response_ids"], e["labels"]) for e in examples]
    return hashlib.sha1(json.dumps(rows).encode()).hexdigest()[:16]


def load_or_train_toy_discriminator(device: str = "cpu", cache_dir: str | None = None, rebuild: bool = False,
                                    settings: dict | None = None):
    """The toy discriminator (DEVIATION(5)) and the policy's tokenizer (rubric_world.build_tokenizer()).

    Loaded from `cache_dir` (default_cache_dir()) when it was trained with the same settings, instruction,
    tokenizer and data; otherwise trained on the minimal pairs of Rubric World's train split and saved there.
    `settings` overrides TOY_SETTINGS entries (e.g. {"steps": 20} in tests).
    """
    unknown = sorted(set(settings or {}) - set(TOY_SETTINGS))
    if unknown:
        raise ValueError(f"unknown discriminator settings {unknown}; known: {sorted(TOY_SETTINGS)}")
    wanted = {**TOY_SETTINGS, **(settings or {})}
    cache_dir = cache_dir or default_cache_dir()
    tokenizer = rubric_world.build_tokenizer()
    prompts = rubric_world.make_splits(seed=wanted["data_seed"])["train"]
    fingerprint = data_fingerprint(rubric_world.rubric_world_examples(prompts[:20], tokenizer, seed=wanted["seed"]))
    meta_path = os.path.join(cache_dir, META_FILE)
    if not rebuild and os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        same = (meta.get("settings") == wanted and meta.get("instruction") == INSTRUCTION
                and meta.get("data") == fingerprint)
        if same and vocab_fingerprint(AutoTokenizer.from_pretrained(cache_dir)) == vocab_fingerprint(tokenizer):
            return load_discriminator(cache_dir, tokenizer, device)
    examples = rubric_world.rubric_world_examples(prompts, tokenizer, seed=wanted["seed"])
    model = build_toy_discriminator(tokenizer, backbone=wanted["backbone"], hidden=wanted["hidden"],
                                    layers=wanted["layers"], heads=wanted["heads"],
                                    intermediate=wanted["intermediate"], seed=wanted["seed"])
    start = time.time()
    with tqdm(total=wanted["steps"], desc="discriminator", mininterval=2.0) as bar:
        losses = train_discriminator(model, tokenizer, examples, steps=wanted["steps"],
                                     batch_size=wanted["batch_size"], lr=wanted["lr"], seed=wanted["seed"],
                                     progress=lambda step, loss: bar.update(1))
    wall = time.time() - start
    final_loss = sum(losses[-50:]) / len(losses[-50:])
    save_discriminator(model, tokenizer, cache_dir, {"settings": wanted, "data": fingerprint, "examples": len(examples),
                                                     "final_loss": final_loss, "wall_s": wall,
                                                     "threads": torch.get_num_threads()})
    print(f"toy discriminator: {wanted['backbone']}, {wanted['steps']} steps on {len(examples)} minimal-pair "
          f"examples, final loss {final_loss:.3f}, {wall:.0f} s, {torch.get_num_threads()} threads -> {cache_dir}")
    return model.to(device).eval(), tokenizer


# ----------------------------------------------------------------------------- a discriminator for a real policy
# The recipe for a real policy and a dataset whose rubrics have checkers (IFEval): the policy's own responses to the
# TRAINING prompts, sampled with the RL decoding; minimal edits found by checker search (checker_edits.py), both sides
# labelled; a small bidirectional encoder over the policy's vocabulary whose word embeddings start from a PCA of the
# policy's input embeddings ("policy_pca"; "random" is the alternative measured in RESULTS.md).
REAL_RECIPE = dict(samples=2, max_new_tokens=128, temperature=0.99, top_p=0.99, top_k=100, max_calls=MAX_CALLS,
                   backbone="bidirectional", hidden=128, layers=2, heads=4, intermediate=256, init="policy_pca",
                   steps=2000, batch_size=32, lr=1e-3, seed=0)
PUT_TEXTS = (",", ".", "!", "*", "#", "\n", '"', " The", " the")       # tokens any rubric's edit may put in


def put_candidates(tokenizer, rubric: dict) -> list[list[int]]:
    """Token sequences an edit may put into a response: the rubric's own words (keywords, forbidden words, an end
    phrase, a letter, ...) each with a leading space, then PUT_TEXTS (punctuation, a capitalised and a plain word)."""
    args = rubric.get("args", {})
    words = [v for v in args.values() if isinstance(v, str)] + [
        w for v in args.values() if isinstance(v, list) for w in v if isinstance(w, str)]
    texts = [" " + w.strip() for w in words if w.strip()] + list(PUT_TEXTS)
    return [ids for ids in dict.fromkeys(tuple(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
            if ids]


def checker_examples(prompts: list[dict], responses: list[list[list[int]]], tokenizer, checkers: dict,
                     max_calls: int = MAX_CALLS) -> tuple[list[dict], dict]:
    """Minimal pairs of a policy's responses, labelled by checker search: (examples, {rubric type: counts}).

    responses[b][g]: token ids of a response to prompts[b], its end-of-sequence token last when it has one.
    Counts per type: pairs, token_labels (an edit flipped the verdict), whole (no edit within max_calls did),
    crashed (the checker raised: the pair is skipped), no_checker, empty (an empty response is skipped), calls."""
    examples, stats = [], defaultdict(lambda: defaultdict(int))
    for prompt, group in zip(prompts, responses):
        for ids in group:
            tail = int(bool(ids) and ids[-1] == tokenizer.eos_token_id)
            text_of = lambda e: tokenizer.decode(e[:len(e) - tail], skip_special_tokens=True)  # noqa: E731
            for rubric in prompt["rubrics"]:
                count, checker = stats[rubric["type"]], checkers.get(rubric["type"])
                count["pairs"] += 1
                if checker is None or not text_of(ids).strip():
                    count["no_checker" if checker is None else "empty"] += 1
                    continue
                verdict = lambda e, c=checker, r=rubric: bool(c(text_of(e), **r.get("args", {})))  # noqa: E731
                try:
                    passes = verdict(ids)
                    edited, kind, calls = minimal_edit(ids, verdict, [list(p) for p in put_candidates(tokenizer, rubric)], max_calls, tail)
                except Exception:                                # a crashed checker: counted, the pair skipped
                    count["crashed"] += 1
                    continue
                count["calls"] += calls
                count["token_labels" if edited is not None else "whole"] += 1
                examples += label_pair(ids, edited, kind, rubric, passes, prompt_id=prompt["id"])
    return examples, {t: dict(c) for t, c in sorted(stats.items())}


def policy_responses(model, tokenizer, prompts: list[dict], recipe: dict, seed: int) -> list[list[list[int]]]:
    """recipe["samples"] responses per prompt with the RL decoding, as token-id lists (EOS included when emitted)."""
    response_ids, token_mask = generate(
        model, tokenizer, encode_prompts(tokenizer, prompts), recipe["samples"], recipe["max_new_tokens"], 16384,
        temperature=recipe["temperature"], top_p=recipe["top_p"], top_k=recipe["top_k"], progress="policy samples",
        generator=torch.Generator().manual_seed(seed))                             # (B, G, T)
    return [[ids[mask].tolist() for ids, mask in zip(row_ids, row_mask)] for row_ids, row_mask in
            zip(response_ids, token_mask)]


def encoder_for(policy_model, tokenizer, recipe: dict):
    """The recipe's token classifier over the policy's vocabulary; "policy_pca": word embeddings start from the
    top principal directions of the policy's own input embeddings (token similarity the policy already learnt)."""
    model = build_toy_discriminator(tokenizer, recipe["backbone"], recipe["hidden"], recipe["layers"], recipe["heads"],
                                    recipe["intermediate"], max_len=1024, seed=recipe["seed"])
    if recipe["init"] == "policy_pca":
        weights = policy_model.get_input_embeddings().weight.detach().float()[:len(tokenizer)]   # (V, H_policy)
        centred = weights - weights.mean(dim=0)
        _, _, directions = torch.pca_lowrank(centred, q=recipe["hidden"], center=False, niter=4)  # (H_policy, h)
        projected = centred @ directions                                          # (V, h)
        with torch.no_grad():
            model.get_input_embeddings().weight.copy_(projected / projected.std() * 0.02)
    return model


def fingerprint(*parts) -> str:
    """A short hash of JSON-able parts: what a cached discriminator was built from."""
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def build_real_discriminator(policy: str, data: str, out_dir: str = "", recipe: dict | None = None,
                             device: str = "cpu", rebuild: bool = False):
    """(model, tokenizer, meta) of the discriminator for `policy` on `data`'s training prompts: loaded from `out_dir`
    (default cache/discriminators/<policy>-<data>) when it was built from the same policy, data and recipe,
    otherwise built there: sampled, labelled by checker search, trained, saved with the held-out report."""
    recipe = {**REAL_RECIPE, **(recipe or {})}
    model, tokenizer = policies.load_policy(policy, device, "float32")
    splits = tasks.load_splits(data)
    checkers = tasks.data_checkers(data)
    key = fingerprint(policy_fingerprint(model, tokenizer), [(p["id"], p["rubrics"]) for p in splits["train"]],
                      recipe, INSTRUCTION)
    out_dir = out_dir or real_cache_dir(policy, data)
    meta_path = os.path.join(out_dir, META_FILE)
    if not rebuild and os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        if meta.get("key") == key:
            disc, disc_tokenizer = load_discriminator(out_dir, tokenizer, device)
            return disc, disc_tokenizer, meta
    timings, tic = {}, time.time()
    train_responses = policy_responses(model, tokenizer, splits["train"], recipe, recipe["seed"])
    held_out = splits["val"] + splits["test"]
    held_out_responses = policy_responses(model, tokenizer, held_out, recipe, recipe["seed"] + 1)
    timings["sample_s"], tic = time.time() - tic, time.time()
    examples, coverage = checker_examples(splits["train"], train_responses, tokenizer, checkers, recipe["max_calls"])
    held_out_examples, held_out_coverage = checker_examples(held_out, held_out_responses, tokenizer, checkers,
                                                            recipe["max_calls"])
    timings["label_s"], tic = time.time() - tic, time.time()
    if not examples:
        raise ValueError(f"no rubric of {data!r} has a rule checker, so no minimal edit can be found by code: label its "
                         "responses with an LLM (llm_labels.py), train a discriminator and pass --discriminator DIR")
    disc = encoder_for(model, tokenizer, recipe)
    with tqdm(total=recipe["steps"], desc="discriminator", mininterval=2.0) as bar:
        losses = train_discriminator(disc, tokenizer, examples, recipe["steps"], recipe["batch_size"], recipe["lr"],
                                     seed=recipe["seed"], progress=lambda step, loss: bar.update(1))
    timings["train_s"] = time.time() - tic
    report = held_out_report(disc, tokenizer, held_out_examples)
    meta = {"key": key, "policy": policy, "data": data, "recipe": recipe, "examples": len(examples),
            "held_out_examples": len(held_out_examples), "coverage": coverage, "held_out_coverage": held_out_coverage,
            "final_loss": sum(losses[-50:]) / len(losses[-50:]), "threads": torch.get_num_threads(),
            **{k: round(v, 1) for k, v in timings.items()}, "report": report}
    save_discriminator(disc, tokenizer, out_dir, meta)
    write_jsonl(os.path.join(out_dir, "examples.jsonl"), examples)                # for inspection, and for
    write_jsonl(os.path.join(out_dir, "held_out_examples.jsonl"), held_out_examples)  # experiments/ to reuse
    print(f"discriminator for {policy} on {data}: {len(examples)} examples, sampled in {timings['sample_s']:.0f} s, "
          f"labelled in {timings['label_s']:.0f} s, trained in {timings['train_s']:.0f} s -> {out_dir}")
    return disc.eval(), tokenizer, meta


def real_cache_dir(policy: str, data: str) -> str:
    """cache/discriminators/<policy>-<data> (under $RTT_CACHE when set)."""
    return os.path.join(os.environ.get("RTT_CACHE") or os.path.join(REPO_ROOT, "cache"), "discriminators",
                        f"{os.path.basename(policy.rstrip('/'))}-{os.path.basename(data)}")


def policy_fingerprint(model, tokenizer) -> str:
    """What identifies a policy for a cached discriminator: its vocabulary, config and a checksum of its weights."""
    checksum = sum(float(p.detach().double().sum()) for p in model.parameters())
    return fingerprint(vocab_fingerprint(tokenizer), model.config.to_dict(), round(checksum, 6))


def held_out_report(model, tokenizer, examples: list[dict], seed: int = 0) -> dict:
    """The discriminator beside uniform and random relevance on held-out examples: {group: {provider: metrics}}."""
    generator = torch.Generator().manual_seed(seed)
    return evaluate(examples, {"discriminator": predict_examples(model, tokenizer, examples),
                               "uniform": [torch.ones(len(e["response_ids"])) for e in examples],
                               "random": [torch.rand(len(e["response_ids"]), generator=generator) for e in examples]})


def relevance_provider(kind: str, policy: str, data: str, tokenizer, device: str = "cpu", seed: int = 0,
                       discriminator_dir: str = "", max_batch_tokens: int = 0):
    """fn(prompts, response_ids (B, G, T), token_mask (B, G, T)) -> relevance w (B, G, K, T) float32 of one kind:
    "discriminator" (the toy one, or the one saved in discriminator_dir, or the one built for this policy and data:
    built on first use and cached), "oracle" (Rubric World's minimal-edit labels), "uniform" or "random" (seeded).
    A discriminator must share the policy's tokenizer, and one built for another dataset is refused."""
    if kind == "oracle":
        return lambda ps, ids, mask: rubric_world.oracle_relevance(ps, ids, mask, tokenizer)  # noqa: E731
    if kind != "discriminator":
        return make_relevance_fn(kind=kind, seed=seed)
    if policy == "toy":
        model, disc_tokenizer = load_or_train_toy_discriminator(device=device)
    elif discriminator_dir:
        model, disc_tokenizer = load_discriminator(discriminator_dir, tokenizer, device)
        built_for = read_meta(discriminator_dir).get("data")
        if built_for is not None and built_for != data:
            raise ValueError(f"the discriminator in {discriminator_dir} was built for --data {built_for}, not {data}")
    else:
        model, disc_tokenizer, _ = build_real_discriminator(policy, data, device=device)
    return make_relevance_fn(model, disc_tokenizer, policy_tokenizer=tokenizer,
                             max_tokens_per_batch=max_batch_tokens or INFERENCE_BATCH_TOKENS)


def read_meta(path: str) -> dict:
    """META_FILE of a saved discriminator ({} when it has none: any token classifier may be used)."""
    meta_path = os.path.join(path, META_FILE)
    if not os.path.exists(meta_path):
        return {}
    with open(meta_path) as f:
        return json.load(f)


# ----------------------------------------------------------------------------- report
def evaluate(examples: list[dict], predictions: dict[str, list[torch.Tensor]]) -> dict:
    """token_metrics of every provider on: all examples, the identifiable / not identifiable ones, each scope
    (token labels / whole response, when known), each rubric type, and each (type, side): {group: {provider: ...}}."""
    groups: dict[str, list[int]] = {"all": list(range(len(examples))), "identifiable": [], "not_identifiable": []}
    for i, example in enumerate(examples):
        groups["identifiable" if example["identifiable"] else "not_identifiable"].append(i)
        if "scope" in example:
            groups.setdefault(f"scope/{example['scope']}", []).append(i)
        groups.setdefault(f"type/{example['type']}", []).append(i)
        groups.setdefault(f"type_side/{example['type']}/{example['side']}", []).append(i)
    return {group: {name: token_metrics([probs[i] for i in idx], [examples[i]["labels"] for i in idx],
                                        [examples[i]["violated"] for i in idx]) for name, probs in predictions.items()}
            for group, idx in sorted(groups.items(), key=lambda kv: (kv[0].count("/"), kv[0]))}


def rubric_world_report(model, tokenizer, baselines: bool = True, seed: int = 0) -> dict:
    """The discriminator (and the uniform, random and greedy baselines) on the held-out test prompts and on
    the rubric combinations held out of training: {split: {group: {provider: metrics}}}."""
    splits = rubric_world.make_splits(seed=0)
    report = {}
    for offset, name in enumerate(("test", "test_unseen_combos")):
        examples = rubric_world.rubric_world_examples(splits[name], tokenizer, seed=seed + 1 + offset)
        predictions = {"discriminator": predict_examples(model, tokenizer, examples)}
        if baselines:
            generator = torch.Generator().manual_seed(seed)
            predictions["uniform"] = [torch.ones(len(e["response_ids"])) for e in examples]
            predictions["random"] = [torch.rand(len(e["response_ids"]), generator=generator) for e in examples]
            predictions["greedy"], greedy_stats = rubric_world.greedy_predictions(examples, tokenizer)
        report[name] = evaluate(examples, predictions)
        if baselines:
            report[name]["greedy_parsing"] = greedy_stats
    return report


def summary_table(split_report: dict) -> str:
    """One line per group (all, identifiable or not, each rubric type): F1 / AUROC / top-1-violated of every
    provider; the per-(type, side) groups stay in the JSON."""
    providers = list(split_report["all"])
    lines = [f"{'group':34s}" + "".join(f"{p:>26s}" for p in providers),
             f"{'':34s}" + "".join(f"{'F1   AUROC  top1':>26s}" for _ in providers)]
    for group, by_provider in split_report.items():
        if group == "greedy_parsing" or group.startswith("type_side/"):
            continue
        cells = "".join(f"{m['f1']:14.3f}{m['auroc']:6.3f}{m['top1_violated']:6.3f}" for m in by_provider.values())
        lines.append(f"{group:28s}{by_provider[providers[0]]['examples']:6d}{cells}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- heat map
def _rgb(weight: float) -> tuple[int, int, int]:
    """White (w = 0) to red (w = 1)."""
    return 255, int(255 * (1 - 0.8 * weight)), int(255 * (1 - 0.85 * weight))


def heatmap_terminal(example: dict) -> str:
    """The heat map in 24-bit terminal colours: one line per rubric, tokens shaded by w."""
    lines = []
    for k, (rubric, verdict) in enumerate(zip(example["rubrics"], example["verdicts"])):
        cells = [f"\x1b[48;2;{r};{g};{b}m\x1b[30m{token}\x1b[0m"
                 for token, (r, g, b) in zip(example["tokens"], (_rgb(float(w)) for w in example["weights"][k]))]
        lines.append(f"{'PASS' if verdict else 'FAIL'} {rubric}\n     " + " ".join(cells))
    return "\n".join(lines)


def heatmap_html(example: dict) -> str:
    """The heat map as a self-contained HTML page: tokens shaded by w, oracle-relevant tokens underlined."""
    rows = []
    for k, (rubric, verdict) in enumerate(zip(example["rubrics"], example["verdicts"])):
        spans = []
        for t, token in enumerate(example["tokens"]):
            w, r_, g_, b_ = float(example["weights"][k, t]), *_rgb(float(example["weights"][k, t]))
            underline = "text-decoration:underline 2px" if example["oracle"][k, t] > 0.5 else ""
            spans.append(f'<span title="w = {w:.2f}" style="background:rgb({r_},{g_},{b_});{underline}">'
                         f"{html.escape(token)}</span>")
        rows.append(f"<p><b>{'PASS' if verdict else 'FAIL'}</b> {html.escape(rubric)}<br>{' '.join(spans)}</p>")
    return ("<!doctype html><meta charset='utf-8'><title>RTT token relevance</title>"
            "<body style='font-family:monospace;max-width:70em'>"
            f"<p>{html.escape(example['prompt'])}</p><p>shade = discriminator relevance w; "
            "underlined = relevant by the oracle's minimal modification</p>" + "".join(rows) + "</body>")


def save_heatmap_png(example: dict, path: str) -> None:
    """Rows = rubrics (with their verdict), columns = response tokens, colour = w; a dot marks the oracle's labels."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    weights, oracle = example["weights"].numpy(), example["oracle"].numpy()       # (K, T), (K, T)
    fig, ax = plt.subplots(figsize=(0.45 * weights.shape[1] + 4, 0.5 * weights.shape[0] + 2))
    image = ax.imshow(weights, cmap="Reds", vmin=0.0, vmax=1.0, aspect="auto")
    rows, cols = oracle.nonzero()
    ax.scatter(cols, rows, s=12, c="black", label="oracle: relevant")
    ax.set_xticks(range(weights.shape[1]), example["tokens"], rotation=90)
    ax.set_yticks(range(weights.shape[0]), [f"{'PASS' if v else 'FAIL'}  {r}" for r, v in
                                            zip(example["rubrics"], example["verdicts"])], fontsize=8)
    fig.colorbar(image, ax=ax, label="relevance w")
    ax.legend(loc="upper right", bbox_to_anchor=(1.0, 1.15), fontsize=8)
    fig.tight_layout()
    tmp = path + ".tmp"
    fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def real_heatmap_example(model, tokenizer, examples: list[dict], prompts: dict[str, dict]) -> dict:
    """One held-out policy response with every rubric of its prompt: the discriminator's w beside the checker
    search's labels ("oracle"). Prefers a response that violates a rubric with token-level labels, then more rubrics."""
    by_response = defaultdict(list)
    for example in examples:
        if not example["edited"]:
            by_response[(example["prompt_id"], tuple(example["response_ids"]))].append(example)
    if not by_response:
        raise ValueError("no held-out example to draw a heat map of")
    (prompt_id, ids), rows = max(by_response.items(), key=lambda item: (any(
        r["violated"] and r["scope"] == "tokens" for r in item[1]), len(item[1])))
    response = torch.tensor([[list(ids)]])                                         # (1, 1, T)
    weights = relevance(model, tokenizer, [{"rubrics": rows}], response, torch.ones_like(response, dtype=torch.bool))
    return {"prompt": prompts[prompt_id]["prompt"], "tokens": [tokenizer.decode([i]) for i in ids],
            "rubrics": [r["description"] for r in rows], "verdicts": [not r["violated"] for r in rows],
            "weights": weights[0, 0], "oracle": torch.tensor([r["labels"] for r in rows])}


# ----------------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build (or load) a relevance discriminator and measure it.")
    parser.add_argument("--policy", default="toy", help="toy | smollm2 | a save_pretrained dir or hub id")
    parser.add_argument("--data", default="rubric_world", help="rubric_world | ifeval | a rubric JSONL")
    parser.add_argument("--out", default="", help="where a real policy's discriminator goes (default: cache/)")
    parser.add_argument("--json", help="write every metric to this JSON file")
    parser.add_argument("--heatmap", help="save a per-rubric heat map of one held-out response (PNG, plus .html)")
    parser.add_argument("--rebuild", action="store_true", help="retrain even if a cached model exists")
    parser.add_argument("--compare-backbones", action="store_true",
                        help="toy: also train the other backbone (causal vs bidirectional), compare per rubric type")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.policy != "toy":
        try:
            model, tokenizer, meta = build_real_discriminator(args.policy, args.data, args.out, device=args.device,
                                                              rebuild=args.rebuild)
        except (OSError, ValueError) as error:
            raise SystemExit(f"cannot build the discriminator: {error}") from error
        print("\nheld-out responses (F1 at 0.5 / AUROC / top-1 token of a violated rubric is relevant)\n"
              + summary_table(meta["report"]))
        print("\nlabel coverage: " + ", ".join(f"{t} {c.get('token_labels', 0)}/{c['pairs']}"
                                               for t, c in meta["coverage"].items()))
        held_out = tasks.load_splits(args.data)
        prompts = {p["id"]: p for p in held_out["val"] + held_out["test"]}
        saved = args.out or real_cache_dir(args.policy, args.data)
        example = real_heatmap_example(model, tokenizer, read_jsonl(os.path.join(saved, "held_out_examples.jsonl")),
                                       prompts)
        report = meta
    else:
        model, tokenizer = load_or_train_toy_discriminator(device=args.device, rebuild=args.rebuild)
        report = {"settings": TOY_SETTINGS, "instruction": INSTRUCTION, **rubric_world_report(model, tokenizer)}
        for split in ("test", "test_unseen_combos"):
            print(f"\n{split}  (F1 at 0.5 / AUROC / top-1 token of a violated rubric is relevant)\n"
                  + summary_table(report[split]))
        if args.compare_backbones:
            report["backbones"] = compare_backbones(report, tokenizer, args)
        example = rubric_world.heatmap_example(model, tokenizer)
    print("\n" + example["prompt"] + "\n" + heatmap_terminal(example))
    if args.json:
        write_json(args.json, report)
        print(f"metrics -> {args.json}")
    if args.heatmap:
        save_heatmap_png(example, args.heatmap)
        write_text(os.path.splitext(args.heatmap)[0] + ".html", heatmap_html(example))
        print(f"heat map -> {args.heatmap} and {os.path.splitext(args.heatmap)[0]}.html")


def compare_backbones(report: dict, tokenizer, args) -> dict:
    """The toy discriminator's backbone beside the other one (causal vs bidirectional), per group."""
    other = "causal" if TOY_SETTINGS["backbone"] == "bidirectional" else "bidirectional"
    other_model, _ = load_or_train_toy_discriminator(args.device, default_cache_dir() + f"_{other}", args.rebuild,
                                                     {"backbone": other})
    backbones = {TOY_SETTINGS["backbone"]: {s: {g: m["discriminator"] for g, m in report[s].items()
                                                if g != "greedy_parsing"} for s in ("test", "test_unseen_combos")},
                 other: {s: {g: m["discriminator"] for g, m in r.items()} for s, r in
                         rubric_world_report(other_model, tokenizer, baselines=False).items()}}
    for split in ("test", "test_unseen_combos"):
        print(f"\n{split}: {other} backbone\n" + summary_table(
            {g: {"discriminator": m} for g, m in backbones[other][split].items()}))
    return backbones


if __name__ == "__main__":
    main()
