"""
relevance/report.py — how good is a relevance discriminator: token metrics per group, beside baselines; heat maps.

Paper:    the paper reports no accuracy for its discriminator; we measure ours (METHOD.md §4).
Input:    examples {"description", "response_ids", "labels", "type", "side", "violated", "identifiable", ...}
          (relevance/rubric_world_labels.py, relevance/checker_edits.py) and each provider's scores per example
Output:   {group: {provider: {"f1", "precision", "recall", "auroc", "top1_violated", "examples", ...}}} over: all
          examples, identifiable or not, each label scope, each rubric type, each (type, scope), each (type, side);
          a table; heat maps of one response (rows = rubrics, columns = tokens, colour = w) in the terminal, as
          HTML and as PNG.
Baselines. uniform (w = 1 everywhere: F1 = the share of relevant tokens, AUROC 0.5), random (w ~ U(0, 1)), and on
          Rubric World the greedy quote baseline (relevance/rubric_world_labels.greedy_predictions).
"""

import html
import os
from collections import defaultdict

import torch

from discriminator import predict_examples, relevance, token_metrics
from relevance.rubric_world_labels import greedy_predictions, rubric_world_examples
from tasks.rubric_world import make_splits


def held_out_report(model, tokenizer, examples: list[dict], seed: int = 0) -> dict:
    """The discriminator beside uniform and random relevance on held-out examples: {group: {provider: metrics}}."""
    generator = torch.Generator().manual_seed(seed)
    return evaluate(examples, {"discriminator": predict_examples(model, tokenizer, examples),
                               "uniform": [torch.ones(len(e["response_ids"])) for e in examples],
                               "random": [torch.rand(len(e["response_ids"]), generator=generator) for e in examples]})


def evaluate(examples: list[dict], predictions: dict[str, list[torch.Tensor]]) -> dict:
    """token_metrics of every provider on: all examples, the identifiable / not identifiable ones, each scope
    (token labels / whole response, when known), each rubric type, each (type, scope) and each (type, side):
    {group: {provider: ...}}."""
    groups: dict[str, list[int]] = {"all": list(range(len(examples))), "identifiable": [], "not_identifiable": []}
    for i, example in enumerate(examples):
        groups["identifiable" if example["identifiable"] else "not_identifiable"].append(i)
        if "scope" in example:
            groups.setdefault(f"scope/{example['scope']}", []).append(i)
            groups.setdefault(f"type_scope/{example['type']}/{example['scope']}", []).append(i)
        groups.setdefault(f"type/{example['type']}", []).append(i)
        groups.setdefault(f"type_side/{example['type']}/{example['side']}", []).append(i)
    return {group: {name: token_metrics([probs[i] for i in idx], [examples[i]["labels"] for i in idx],
                                        [examples[i]["violated"] for i in idx]) for name, probs in predictions.items()}
            for group, idx in sorted(groups.items(), key=lambda kv: (kv[0].count("/"), kv[0]))}


def rubric_world_report(model, tokenizer, baselines: bool = True, seed: int = 0) -> dict:
    """The discriminator (and the uniform, random and greedy baselines) on the held-out test prompts and on
    the rubric combinations held out of training: {split: {group: {provider: metrics}}}."""
    splits = make_splits(seed=0)
    report = {}
    for offset, name in enumerate(("test", "test_unseen_combos")):
        examples = rubric_world_examples(splits[name], tokenizer, seed=seed + 1 + offset)
        predictions = {"discriminator": predict_examples(model, tokenizer, examples)}
        if baselines:
            generator = torch.Generator().manual_seed(seed)
            predictions["uniform"] = [torch.ones(len(e["response_ids"])) for e in examples]
            predictions["random"] = [torch.rand(len(e["response_ids"]), generator=generator) for e in examples]
            predictions["greedy"], greedy_stats = greedy_predictions(examples, tokenizer)
        report[name] = evaluate(examples, predictions)
        if baselines:
            report[name]["greedy_parsing"] = greedy_stats
    return report


def summary_table(split_report: dict) -> str:
    """One line per group (all, identifiable or not, each rubric type): F1 / AUROC / top-1-violated of every
    provider; the per-(type, scope) and per-(type, side) groups stay in the JSON."""
    providers = list(split_report["all"])
    lines = [f"{'group':34s}" + "".join(f"{p:>26s}" for p in providers),
             f"{'':34s}" + "".join(f"{'F1   AUROC  top1':>26s}" for _ in providers)]
    for group, by_provider in split_report.items():
        if group == "greedy_parsing" or group.startswith(("type_side/", "type_scope/")):
            continue
        cells = "".join(f"{m['f1']:14.3f}{m['auroc']:6.3f}{m['top1_violated']:6.3f}" for m in by_provider.values())
        lines.append(f"{group:28s}{by_provider[providers[0]]['examples']:6d}{cells}")
    return "\n".join(lines)


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
            w = float(example["weights"][k, t])
            r_, g_, b_ = _rgb(w)
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
    weights = example["weights"].numpy()                                           # (K, T)
    oracle = example["oracle"].numpy()                                             # (K, T)
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


def real_heatmap_example(model, tokenizer, examples: list[dict], prompts: dict[str, dict],
                         rubric_type: str = "") -> dict:
    """One held-out policy response with every rubric of its prompt: the discriminator's w beside the checker
    search's labels ("oracle"). Prefers a response that violates a rubric with token-level labels (of a type that
    starts with `rubric_type`, e.g. "keywords:") that the response itself identifies, then any token-level labels,
    then more rubrics. ValueError when no response has a rubric of that type."""
    by_response = defaultdict(list)
    for example in examples:
        if not example["edited"]:
            by_response[(example["prompt_id"], tuple(example["response_ids"]))].append(example)
    by_response = {key: rows for key, rows in by_response.items()
                   if any(r["type"].startswith(rubric_type) for r in rows)}
    if not by_response:
        raise ValueError(f"no held-out example{' of a ' + rubric_type + ' rubric' if rubric_type else ''} to draw "
                         "a heat map of")
    def shows(rows: list[dict], identifiable: bool) -> bool:             # a violated rubric with token labels
        return any(r["violated"] and r["scope"] == "tokens" and r["type"].startswith(rubric_type)
                   and (r["identifiable"] or not identifiable) for r in rows)

    (prompt_id, ids), rows = max(by_response.items(), key=lambda item: (shows(item[1], True), shows(item[1], False),
                                                                        len(item[1])))
    response = torch.tensor([[list(ids)]])                                         # (1, 1, T)
    weights = relevance(model, tokenizer, [{"rubrics": rows}], response, torch.ones_like(response, dtype=torch.bool))
    return {"prompt": prompts[prompt_id]["prompt"], "tokens": [tokenizer.decode([i]) for i in ids],
            "rubrics": [r["description"] for r in rows], "verdicts": [not r["violated"] for r in rows],
            "weights": weights[0, 0], "oracle": torch.tensor([r["labels"] for r in rows])}
