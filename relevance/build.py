"""
relevance/build.py — build a relevance discriminator once, cache it, and measure it: the toy one for Rubric World, or
one for a real policy and a rubric dataset. Using it is discriminator.relevance; this file only makes it.

Paper:    the Token-Level Relevance Discriminator and its training data (paper appendix: minimal pairs); METHOD.md §4.
Toy:      trained on Rubric World's minimal pairs (relevance/rubric_world_labels.py: both sides of every pair,
          labels from the token diff), cached in cache/toy/discriminator, rebuilt only when its settings,
          instruction, tokenizer or data change.
Real:     the policy's own responses to the dataset's TRAINING prompts, sampled with the RL decoding, and the
          reference answers of their base tasks where they ship (relevance/reference_answers.py); minimal edits
          found by checker search (relevance/checker_edits.py, in parallel processes), both sides labelled; the
          policy's own first 2 transformer layers trained as a token classifier on them; cached in
          cache/discriminators/<policy>-<data> with its held-out report (relevance/report.py), its sampled responses
          and labelled pairs beside it in <policy>-<data>-pairs; each stage is keyed by a checksum of what it was
          made from (policy, prompts, the recipe's settings of that stage, the labelling code), so a changed
          recipe redoes only the stages it changes (a training setting: training only).
Identifiable labels.  Some diff labels cannot be recovered from one response (METHOD.md §4: the filler that replaced
          a required word is a random word); they are reported apart as "not_identifiable".

Deviations (numbered as in METHOD.md §9):
  5. A tiny encoder (toy) or the policy's own first layers (real) trained on programmatic minimal pairs stands in
     for a fine-tuned LLM (discriminator.py).

Run:      python -m relevance.build --json results/discriminator.json --heatmap results/heatmap.png
          python -m relevance.build --policy smollm2 --data ifeval_train --json report.json --heatmap heatmap.png \
              --heatmap_type keywords:
"""

import argparse
import hashlib
import json
import os
import time

import torch
from tqdm import tqdm
from transformers import AutoModelForTokenClassification, AutoTokenizer

from discriminator import (INSTRUCTION, META_FILE, build_toy_discriminator, check_same_tokenizer,
                           load_discriminator, save_discriminator, train_discriminator, vocab_fingerprint)
from policies.loading import load_policy
from policies.rollout import encode_prompts, generate
from relevance import reference_answers
from relevance.checker_edits import MAX_CALLS, checker_examples
from relevance.report import (heatmap_html, heatmap_terminal, held_out_report, real_heatmap_example,
                              rubric_world_report, save_heatmap_png, summary_table)
from relevance.rubric_world_labels import heatmap_example, rubric_world_examples
from runs.files import cache_path, read_jsonl, write_json, write_jsonl, write_text
from tasks import registry, rubric_world

# DEVIATION(5): a tiny encoder trained on programmatic minimal pairs stands in for a fine-tuned LLM.
# Matching a rubric's word to the same word in the response (include, exclude, order) needs the long run: on
# identifiable test labels F1 0.75 after 1000 steps at lr 3e-3, 0.92 with these settings (lr 2e-3 was faster on
# one thread and much worse on two: 0.94 vs 0.79). A 256-wide feed-forward layer reached 0.98 but made
# relevance inference 1.3x slower (RESULTS.md, Speed).
TOY_SETTINGS = dict(backbone="bidirectional", hidden=64, layers=2, heads=4, intermediate=128, steps=3000,
                    batch_size=64, lr=1e-3, seed=0, data_seed=0)


def default_cache_dir() -> str:
    """cache/toy/discriminator under the repository root, or $RTT_CACHE/toy/discriminator when RTT_CACHE is set."""
    return cache_path("toy", "discriminator")


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
    fingerprint = data_fingerprint(rubric_world_examples(prompts[:20], tokenizer, seed=wanted["seed"]))
    meta_path = os.path.join(cache_dir, META_FILE)
    if not rebuild and os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        same = (meta.get("settings") == wanted and meta.get("instruction") == INSTRUCTION
                and meta.get("data") == fingerprint)
        if same and vocab_fingerprint(AutoTokenizer.from_pretrained(cache_dir)) == vocab_fingerprint(tokenizer):
            return load_discriminator(cache_dir, tokenizer, device)
    examples = rubric_world_examples(prompts, tokenizer, seed=wanted["seed"])
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
# The recipe for a real policy and a dataset whose rubrics have checkers (IFEval's): the policy's own responses to
# (the first train_prompts of) the TRAINING prompts, sampled with the RL decoding; minimal edits found by checker
# search (relevance/checker_edits.py), both sides labelled; the policy's own first 2 transformer layers trained as a
# token classifier ("policy_layers": the policy already ties "commas" to ","). The alternatives measured in
# RESULTS.md are small bidirectional encoders ("policy_pca": word embeddings from a PCA of the policy's; word_match:
# it also reads which response tokens spell a word of the rubric; hidden, heads, intermediate: its width, None for
# policy_layers, which has the policy's).
# reference_answers: also the answers that ship with every training prompt's base task (relevance/reference_answers
# .py), labelled the same way, when the data's prompts have them (tasks/ifeval_train.py's); other data: the policy's
# pairs only, said when built.
REAL_RECIPE = dict(train_prompts=400, samples=2, max_new_tokens=128, temperature=0.99, top_p=0.99, top_k=100,
                   max_calls=MAX_CALLS, reference_answers=True, backbone="causal", hidden=None, layers=2,
                   heads=None, intermediate=None, word_match=False, init="policy_layers", unidentifiable="diff",
                   steps=1000, batch_size=32, lr=3e-4, seed=0)
# A build saves its stages beside the model, each with the checksum of what it was made from, so a changed recipe
# redoes only the stages it changes: sampling (SAMPLE_SETTINGS), labelling (LABEL_SETTINGS, the labelling code),
# training (the rest).
SAMPLE_SETTINGS = ("train_prompts", "samples", "max_new_tokens", "temperature", "top_p", "top_k", "seed")
LABEL_SETTINGS = ("max_calls", "reference_answers")
SAMPLES_FILE = "responses.json"          # the policy's sampled responses (token ids) and what they cost
LABELS_FILE = "labels.json"              # beside examples.jsonl: what the pairs were made from, counts and seconds
LABEL_WORKERS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def policy_responses(model, tokenizer, prompts: list[dict], recipe: dict, seed: int) -> list[list[list[int]]]:
    """recipe["samples"] responses per prompt with the RL decoding, as token-id lists (EOS included when emitted)."""
    response_ids, token_mask = generate(
        model, tokenizer, encode_prompts(tokenizer, prompts), recipe["samples"], recipe["max_new_tokens"], 16384,
        temperature=recipe["temperature"], top_p=recipe["top_p"], top_k=recipe["top_k"], progress="policy samples",
        generator=torch.Generator().manual_seed(seed))                             # (B, G, T)
    return [[ids[mask].tolist() for ids, mask in zip(row_ids, row_mask)] for row_ids, row_mask in
            zip(response_ids, token_mask)]


def reference_pairs(train_prompts: list[dict], held_out: list[dict], tokenizer, checkers: dict,
                    recipe: dict, workers: int = 1) -> tuple[list[dict], dict]:
    """Minimal pairs of responses the policy did not write (relevance/reference_answers.py), labelled by checker
    search as the policy's are: the reference answers to the training prompts whose base task no held-out prompt
    shares (a held-out prompt's task is never read in training, not even answered by another model).
    Returns (examples, coverage per rubric type), as checker_examples."""
    held_out_tasks = {reference_answers.base_task_of(p) for p in held_out}
    prompts = [p for p in train_prompts if reference_answers.base_task_of(p) not in held_out_tasks]
    responses = reference_answers.reference_responses(prompts, tokenizer, recipe["max_new_tokens"])
    return checker_examples(prompts, responses, tokenizer, checkers, recipe["max_calls"], "label reference pairs",
                            workers)


def encoder_for(policy_model, tokenizer, recipe: dict):
    """The recipe's token classifier over the policy's vocabulary; "policy_pca": word embeddings start from the
    top principal directions of the policy's own input embeddings (token similarity the policy already learnt);
    "policy_layers": the policy's own first recipe["layers"] blocks (policy_layers_classifier)."""
    if recipe["init"] == "policy_layers":
        return policy_layers_classifier(policy_model, tokenizer, recipe)
    missing = [k for k in ("hidden", "heads", "intermediate") if recipe[k] is None]
    if missing:
        raise ValueError(f"init {recipe['init']!r} builds a small encoder: give its {', '.join(missing)} (None is "
                         "the policy's width, for init 'policy_layers' only)")
    model = build_toy_discriminator(tokenizer, recipe["backbone"], recipe["hidden"], recipe["layers"], recipe["heads"],
                                    recipe["intermediate"], max_len=1024, seed=recipe["seed"],
                                    word_match=recipe.get("word_match", False))
    if recipe["init"] == "policy_pca":
        weights = policy_model.get_input_embeddings().weight.detach().float()[:len(tokenizer)]   # (V, H_policy)
        centred = weights - weights.mean(dim=0)
        _, _, directions = torch.pca_lowrank(centred, q=recipe["hidden"], center=False, niter=4)  # (H_policy, h)
        projected = centred @ directions                                          # (V, h)
        with torch.no_grad():
            model.get_input_embeddings().weight.copy_(projected / projected.std() * 0.02)
    return model


def policy_layers_classifier(policy_model, tokenizer, recipe: dict):
    """A causal token classifier that is the policy's word embeddings (kept frozen: 49k x 576 for SmolLM2) and its
    first recipe["layers"] transformer blocks and final norm (trained), with a new one-logit head: what the policy
    already knows of words ("commas" and ",") without learning it from the pairs. Its width is the policy's, so the
    recipe's hidden, heads and intermediate must be None; a causal model has no token types to read word_match."""
    given = {k: recipe[k] for k in ("hidden", "heads", "intermediate") if recipe[k] is not None}
    if given or recipe["word_match"] or recipe["backbone"] != "causal":
        raise ValueError(f"init 'policy_layers' takes the policy's width and is causal: set hidden, heads and "
                         f"intermediate to None, word_match False, backbone 'causal' (got {given}, word_match="
                         f"{recipe['word_match']}, backbone {recipe['backbone']!r})")
    if not 1 <= recipe["layers"] <= policy_model.config.num_hidden_layers:
        raise ValueError(f"init 'policy_layers' takes 1 to {policy_model.config.num_hidden_layers} of the policy's "
                         f"layers, got {recipe['layers']}")
    settings = {k: v for k, v in policy_model.config.to_dict().items() if k not in ("id2label", "label2id")}
    if settings.get("layer_types"):                                              # Qwen2: one attention type per layer
        settings["layer_types"] = settings["layer_types"][:recipe["layers"]]
    settings.update(num_labels=1, num_hidden_layers=recipe["layers"], pad_token_id=tokenizer.pad_token_id)
    config = policy_model.config.__class__.from_dict(settings)
    torch.manual_seed(recipe["seed"])                                             # the new head's initialisation
    model = AutoModelForTokenClassification.from_config(config).float()
    missing, _ = model.base_model.load_state_dict(policy_model.base_model.state_dict(), strict=False)
    if missing:
        raise ValueError(f"the policy has no weights for {missing[:3]}: it is not the classifier's architecture")
    model.get_input_embeddings().weight.requires_grad_(False)
    return model


def training_examples(examples: list[dict], recipe: dict) -> list[dict]:
    """The examples the encoder trains on. recipe["unidentifiable"]: "diff" keeps the token diff's labels on both
    sides of every pair, as the paper trains; "zero" trains the side that does not hold the edit to 0 everywhere
    (its labels mark where a token was deleted or put in, which no single response shows: METHOD.md §4 trap 2).
    Held-out labels are never changed."""
    check_unidentifiable(recipe)
    if recipe["unidentifiable"] == "diff":
        return examples
    return [{**e, "labels": [0.0] * len(e["labels"])} if e["scope"] == "tokens" and not e["identifiable"] else e
            for e in examples]


def check_unidentifiable(recipe: dict) -> None:
    """ValueError naming the choices when recipe["unidentifiable"] is neither "diff" nor "zero"."""
    if recipe["unidentifiable"] not in ("diff", "zero"):
        raise ValueError(f"recipe unidentifiable={recipe['unidentifiable']!r}: choose 'diff' or 'zero'")


def fingerprint(*parts) -> str:
    """A short hash of JSON-able parts: what a cached discriminator was built from."""
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def build_real_discriminator(policy: str, data: str, out_dir: str = "", recipe: dict | None = None,
                             device: str = "cpu", rebuild: bool = False, workers: int = LABEL_WORKERS):
    """(model, tokenizer, meta) of the discriminator for `policy` on `data`'s training prompts: loaded from `out_dir`
    (default cache/discriminators/<policy>-<data>) when it was built from the same policy, data and recipe,
    otherwise built there: sampled, labelled by checker search (in `workers` processes), trained, saved with the
    held-out report."""
    recipe = {**REAL_RECIPE, **(recipe or {})}
    check_unidentifiable(recipe)                                                # before an hour of labelling
    model, tokenizer = load_policy(policy, device, "float32")
    splits = registry.load_splits(data)
    checkers = registry.data_checkers(data)
    samples_key = fingerprint(policy_fingerprint(model, tokenizer),
                              [(p["id"], p["prompt"]) for split in splits.values() for p in split],
                              {k: recipe[k] for k in SAMPLE_SETTINGS})
    labels_key = fingerprint(samples_key, [(p["id"], p["rubrics"]) for split in splits.values() for p in split],
                             {k: recipe[k] for k in LABEL_SETTINGS}, labelling_code())
    key = fingerprint(labels_key, recipe, INSTRUCTION)
    out_dir = out_dir or real_cache_dir(policy, data)
    meta = None if rebuild else saved_stage(os.path.join(out_dir, META_FILE), "key", key)
    if meta is not None:
        disc, disc_tokenizer = load_discriminator(out_dir, tokenizer, device)
        return disc, disc_tokenizer, meta
    pairs = pairs_dir(out_dir)
    labelled = None if rebuild else saved_stage(os.path.join(pairs, LABELS_FILE), "labels_key", labels_key)
    reused = labelled is not None
    if not reused:
        responses = saved_stage(os.path.join(pairs, SAMPLES_FILE), "samples_key", samples_key)
        if responses is None:
            responses = sampled_responses(model, tokenizer, splits, recipe, os.path.join(pairs, SAMPLES_FILE),
                                          samples_key)
        examples, held_out_examples, labelled = label_pairs(responses, tokenizer, splits, checkers, data, recipe,
                                                            workers)
        write_jsonl(os.path.join(pairs, "examples.jsonl"), examples)            # for inspection, for a retrain and
        write_jsonl(os.path.join(pairs, "held_out_examples.jsonl"), held_out_examples)         # for experiments/
        labelled = {"labels_key": labels_key, **labelled}
        write_json(os.path.join(pairs, LABELS_FILE), labelled)                 # last: the pairs above are whole
    else:
        print(f"the labelled pairs in {pairs} are reused (sampled and labelled as this recipe asks; that took "
              f"{labelled['sample_s'] + labelled['label_s'] + labelled.get('reference_label_s', 0):.0f} s): "
              "training only")
        examples = read_jsonl(os.path.join(pairs, "examples.jsonl"))
        held_out_examples = read_jsonl(os.path.join(pairs, "held_out_examples.jsonl"))
    tic = time.time()
    disc = encoder_for(model, tokenizer, recipe)
    with tqdm(total=recipe["steps"], desc="discriminator", mininterval=2.0) as bar:
        losses = train_discriminator(disc, tokenizer, training_examples(examples, recipe), recipe["steps"],
                                     recipe["batch_size"], recipe["lr"], seed=recipe["seed"],
                                     progress=lambda step, loss: bar.update(1))
    train_s = time.time() - tic
    report = held_out_report(disc, tokenizer, held_out_examples)
    meta = {"key": key, "policy": policy, "data": data, "recipe": recipe, **labelled, "labels_reused": reused,
            "train_s": round(train_s, 1), "final_loss": sum(losses[-50:]) / len(losses[-50:]),
            "threads": torch.get_num_threads(), "report": report}
    save_discriminator(disc, tokenizer, out_dir, meta)
    sources = f"{meta['policy_examples']} examples of the policy's responses"
    if "reference_label_s" in meta:
        sources += f" + {meta['reference_examples']} of reference answers ({meta['reference_label_s']:.0f} s)"
    print(f"discriminator for {policy} on {data}: {sources}, sampled in {meta['sample_s']:.0f} s, labelled in "
          f"{meta['label_s']:.0f} s, trained in {train_s:.0f} s -> {out_dir}")
    return disc.eval(), tokenizer, meta


def sampled_responses(model, tokenizer, splits: dict, recipe: dict, path: str, samples_key: str) -> dict:
    """The policy's responses to the first recipe["train_prompts"] training prompts and to every held-out prompt
    (recipe["samples"] each, the RL decoding), as token-id lists, saved to `path` with `samples_key`:
    {"train", "held_out", "sample_s", "samples_key"}."""
    tic = time.time()
    train = policy_responses(model, tokenizer, splits["train"][:recipe["train_prompts"]], recipe, recipe["seed"])
    held_out = policy_responses(model, tokenizer, splits["val"] + splits["test"], recipe, recipe["seed"] + 1)
    sampled = {"samples_key": samples_key, "train": train, "held_out": held_out,
               "sample_s": round(time.time() - tic, 1)}
    write_json(path, sampled)
    return sampled


def label_pairs(responses: dict, tokenizer, splits: dict, checkers: dict, data: str, recipe: dict,
                workers: int) -> tuple[list[dict], list[dict], dict]:
    """The build's labelled pairs: the policy's sampled responses labelled by checker search in `workers` processes
    and, where they ship, the reference answers' pairs (tagged "source": "reference"). Returns (training examples,
    held-out examples, {their counts, coverage per rubric type, seconds per stage})."""
    timings = {"sample_s": responses["sample_s"]}
    tic = time.time()
    train_prompts = splits["train"][:recipe["train_prompts"]]                   # the split is already shuffled
    held_out = splits["val"] + splits["test"]
    examples, coverage = checker_examples(train_prompts, responses["train"], tokenizer, checkers, recipe["max_calls"],
                                          "label training pairs", workers)
    held_out_examples, held_out_coverage = checker_examples(held_out, responses["held_out"], tokenizer, checkers,
                                                            recipe["max_calls"], "label held-out pairs", workers)
    timings["label_s"] = time.time() - tic
    if not examples:
        raise ValueError(f"no rubric of {data!r} has a rule checker, so no minimal edit can be found by code: "
                         "label its responses with an LLM (relevance/llm_labels.py), train a discriminator and pass "
                         "--discriminator DIR")
    policy_examples = len(examples)
    reference_coverage = {}
    if recipe["reference_answers"] and reference_answers.has_base_tasks(splits["train"]):
        tic = time.time()
        more, reference_coverage = reference_pairs(splits["train"], held_out, tokenizer, checkers, recipe, workers)
        examples += [{**example, "source": "reference"} for example in more]
        timings["reference_label_s"] = time.time() - tic
    elif recipe["reference_answers"]:
        print(f"no reference answers ship with the prompts of {data} (not tasks/ifeval_train.py's): the "
              "discriminator learns from the policy's pairs only")
    return examples, held_out_examples, {
        "examples": len(examples), "policy_examples": policy_examples,
        "reference_examples": len(examples) - policy_examples, "held_out_examples": len(held_out_examples),
        "coverage": coverage, "held_out_coverage": held_out_coverage,
        "reference_coverage": reference_coverage, "label_workers": workers,
        **{k: round(v, 1) for k, v in timings.items()}}


def pairs_dir(out_dir: str) -> str:
    """Where a build keeps its sampled responses and labelled pairs: beside the model's folder (which a save replaces
    whole), <out_dir>-pairs."""
    return os.path.abspath(out_dir).rstrip(os.sep) + "-pairs"


def saved_stage(path: str, field: str, key: str) -> dict | None:
    """The JSON a build stage saved at `path` (the model's meta, the sampled responses, the label summary) when its
    `field` holds `key` — it was made from what is asked now — else None."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        saved = json.load(f)
    return saved if saved.get(field) == key else None


def labelling_code() -> str:
    """A checksum of the code that makes the labelled pairs (the checker search and the reference answers): saved
    pairs made by other code are labelled again."""
    sources = [os.path.join(os.path.dirname(os.path.abspath(__file__)), name)
               for name in ("checker_edits.py", "reference_answers.py")]
    return hashlib.sha1(b"".join(open(path, "rb").read() for path in sources)).hexdigest()[:16]


def real_cache_dir(policy: str, data: str) -> str:
    """cache/discriminators/<policy>-<data> (under $RTT_CACHE when set)."""
    return cache_path("discriminators", f"{os.path.basename(policy.rstrip('/'))}-{os.path.basename(data)}")


def policy_fingerprint(model, tokenizer) -> str:
    """What identifies a policy for a cached discriminator: its vocabulary, config and a checksum of its weights."""
    checksum = sum(float(p.detach().double().sum()) for p in model.parameters())
    return fingerprint(vocab_fingerprint(tokenizer), model.config.to_dict(), round(checksum, 6))


def discriminator_for(policy: str, data: str, policy_tokenizer, device: str = "cpu", saved_dir: str = ""):
    """(model, tokenizer) of the discriminator a run reads relevance from, built once and cached: the toy one for
    the toy policy, the one saved in `saved_dir`, or the one built for this policy and data (on first use). It must
    read the policy's token ids (the same tokenizer), and one built for another dataset is refused."""
    if policy == "toy":
        model, tokenizer = load_or_train_toy_discriminator(device=device)
    elif saved_dir:
        model, tokenizer = load_discriminator(saved_dir, policy_tokenizer, device)
        built_for = read_meta(saved_dir).get("data")
        if built_for is not None and built_for != data:
            raise ValueError(f"the discriminator in {saved_dir} was built for --data {built_for}, not {data}")
    else:
        model, tokenizer, _ = build_real_discriminator(policy, data, device=device)
    check_same_tokenizer(tokenizer, policy_tokenizer)
    return model, tokenizer


def read_meta(path: str) -> dict:
    """META_FILE of a saved discriminator ({} when it has none: any token classifier may be used)."""
    meta_path = os.path.join(path, META_FILE)
    if not os.path.exists(meta_path):
        return {}
    with open(meta_path) as f:
        return json.load(f)


# ----------------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build (or load) a relevance discriminator and measure it.")
    parser.add_argument("--policy", default="toy", help="toy | smollm2 | a save_pretrained dir or hub id")
    parser.add_argument("--data", default="rubric_world", help="rubric_world | ifeval | ifeval_train | a rubric JSONL")
    parser.add_argument("--out", default="", help="where a real policy's discriminator goes (default: cache/)")
    parser.add_argument("--json", help="write every metric to this JSON file")
    parser.add_argument("--heatmap", help="save a per-rubric heat map of one held-out response (PNG, plus .html)")
    parser.add_argument("--heatmap_type", default="", help="a real policy's heat map shows a response with a rubric "
                        "of a type that starts with this (e.g. keywords:)")
    parser.add_argument("--rebuild", action="store_true", help="retrain even if a cached model exists (a real "
                        "policy's: label again too; its sampled responses are reused when sampled as now)")
    parser.add_argument("--compare_backbones", action="store_true",
                        help="toy: also train the other backbone (causal vs bidirectional), compare per rubric type")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, help="a real policy's: processes that label pairs by checker search "
                                                     f"(default: this machine's cores, {LABEL_WORKERS})")
    args = parser.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        raise SystemExit(f"--workers must be at least 1, got {args.workers}")
    if args.policy == "toy" and args.workers is not None:
        raise SystemExit("--workers is for a real policy's discriminator: the toy's minimal pairs are made with "
                         "their labels")
    if args.policy == "toy" and args.heatmap_type:
        raise SystemExit("--heatmap_type is for a real policy's heat map: the toy's shows its own example")
    if args.policy != "toy":
        try:
            model, tokenizer, meta = build_real_discriminator(args.policy, args.data, args.out, device=args.device,
                                                              rebuild=args.rebuild,
                                                              workers=args.workers or LABEL_WORKERS)  # None: default
        except (OSError, ValueError) as error:
            raise SystemExit(f"cannot build the discriminator: {error}") from error
        print("\nheld-out responses (F1 at 0.5 / AUROC / top-1 token of a violated rubric is relevant)\n"
              + summary_table(meta["report"]))
        print("\nlabel coverage: " + ", ".join(f"{t} {c.get('token_labels', 0)}/{c['pairs']}"
                                               for t, c in meta["coverage"].items()))
        held_out = registry.load_splits(args.data)
        prompts = {p["id"]: p for p in held_out["val"] + held_out["test"]}
        saved = args.out or real_cache_dir(args.policy, args.data)
        try:
            example = real_heatmap_example(model, tokenizer,
                                           read_jsonl(os.path.join(pairs_dir(saved), "held_out_examples.jsonl")),
                                           prompts,
                                           args.heatmap_type)
        except ValueError as error:
            raise SystemExit(f"--heatmap_type {args.heatmap_type}: {error}") from error
        report = meta
    else:
        model, tokenizer = load_or_train_toy_discriminator(device=args.device, rebuild=args.rebuild)
        report = {"settings": TOY_SETTINGS, "instruction": INSTRUCTION, **rubric_world_report(model, tokenizer)}
        for split in ("test", "test_unseen_combos"):
            print(f"\n{split}  (F1 at 0.5 / AUROC / top-1 token of a violated rubric is relevant)\n"
                  + summary_table(report[split]))
        if args.compare_backbones:
            report["backbones"] = compare_backbones(report, tokenizer, args)
        example = heatmap_example(model, tokenizer)
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
