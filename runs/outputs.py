"""
runs/outputs.py — what a training run writes and prints: the out_dir, metrics.jsonl / evals.jsonl, samples.txt with
each token's combined advantage, and the summary at the end (checkpoints: runs/checkpoints.py).

Used by train.py. A person debugging RL reads sampled responses, so samples.txt shows a few every `sample_every`
steps with their rubric verdicts (+ pass, − fail) and, for one response per prompt, every token's combined
advantage A_t = Â + λ·Ã: where the credit of each rubric landed.
"""

import json
import os
import shutil
import time

import torch
from tqdm import tqdm


RUN_FILES = ("metrics.jsonl", "evals.jsonl", "samples.txt", "ckpt.pt", "summary.json", "start_eval.json")


def start_run(out_dir: str, resume: bool, overwrite: bool) -> None:
    """A fresh run never mixes with an earlier one: its files are moved to out_dir-<time of its last write>
    (or deleted with --overwrite). With --resume the run's own files are kept."""
    os.makedirs(out_dir, exist_ok=True)
    earlier = [os.path.join(out_dir, f) for f in RUN_FILES if os.path.exists(os.path.join(out_dir, f))]
    if resume or not earlier:
        return
    if overwrite:
        for path in earlier:
            os.remove(path)
        return
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(max(os.path.getmtime(p) for p in earlier)))
    archive = f"{out_dir.rstrip('/')}-{stamp}"
    while os.path.exists(archive):
        archive += "+"
    shutil.move(out_dir, archive)
    os.makedirs(out_dir)
    print(f"an earlier run was in {out_dir}: moved to {archive}")


class Logger:
    """Metrics to out_dir/metrics.jsonl (one line per step), evaluations to evals.jsonl; wandb only if asked for."""

    def __init__(self, out_dir: str, wandb_project: str, config: dict):
        self.out_dir = out_dir
        self.run = None
        if wandb_project:                                  # off by default, imported only when used
            import wandb
            self.run = wandb.init(project=wandb_project, config=config)

    def log(self, step: int, metrics: dict, name: str = "metrics.jsonl") -> None:
        with open(os.path.join(self.out_dir, name), "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.run is not None:
            self.run.log(metrics, step=step)

    def log_eval(self, step: int, result: dict) -> None:
        with open(os.path.join(self.out_dir, "evals.jsonl"), "a") as f:
            f.write(json.dumps({"step": step, **result}) + "\n")
        tqdm.write(f"step {step:5d} | val instruction acc {result['instruction_accuracy']:.3f} (greedy "
                   f"{result['greedy']['instruction_accuracy']:.3f}) | rubric acc {result['rubric_accuracy']:.3f}")


def token_cells(tokenizer, ids: torch.Tensor, mask: torch.Tensor,
                advantages: torch.Tensor) -> list[tuple[str, float]]:
    """(token text, A_t) for the valid tokens of one response. Shapes: ids, mask, advantages (T,)."""
    def printable(text: str) -> str:                                             # "\n" and control bytes, visible
        return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return [(printable(tokenizer.decode([i])) or tokenizer.convert_ids_to_tokens(i), value)
            for i, value in zip(ids[mask].tolist(), advantages[mask].tolist())]


def shade(value: float) -> tuple[int, int, int]:
    """Green for A_t > 0 (pushed up), red for A_t < 0 (pushed down), white for 0; |A_t| = 2 is the darkest."""
    light = int(255 * (1 - min(abs(value) / 2, 1) * 0.75))
    return (light, 255, light) if value > 0 else (255, light, light) if value < 0 else (255, 255, 255)


def token_view(cells: list[tuple[str, float]], colour: bool) -> str:
    """One response with each token's combined advantage: a signed number in a file, a colour in a terminal."""
    if not colour:
        return " ".join(f"{token}[{value:+.2f}]" for token, value in cells)
    return " ".join("\x1b[48;2;{};{};{}m\x1b[30m".format(*shade(value)) + f"{token}\x1b[0m" for token, value in cells)


def dump_samples(path: str, step: int, tokenizer, prompts, texts, scores, response_ids, token_mask, advantages,
                 n_prompts: int = 2) -> None:
    """A few sampled responses with their rubric verdicts (+ pass, − fail) and, for the first response of each
    prompt, every token's combined advantage A_t: reading samples is how RL runs are debugged."""
    with open(path, "a") as f:
        f.write(f"\n===== step {step} =====\n")
        for b in range(min(n_prompts, len(prompts))):
            f.write(f"[{prompts[b]['id']}] {prompts[b]['prompt']}\n")
            for g, text in enumerate(texts[b]):
                marks = "".join("+" if s > 0 else "-" for s in scores[b, g, :len(prompts[b]["rubrics"])].tolist())
                f.write(f"  {marks:8s} {text!r}\n")
            cells = token_cells(tokenizer, response_ids[b, 0], token_mask[b, 0], advantages[b, 0])
            f.write(f"  A_t of the first response: {token_view(cells, colour=False)}\n")


def most_credited(token_mask: torch.Tensor, advantages: torch.Tensor) -> tuple[int, int]:
    """(b, g) of the response whose token advantages spread the most: where the token credit is easiest to see."""
    high = advantages.masked_fill(~token_mask, float("-inf")).amax(-1)          # (B, G)
    low = advantages.masked_fill(~token_mask, float("inf")).amin(-1)            # (B, G); an empty response: -inf spread
    index = int((high - low).flatten().argmax())
    return divmod(index, token_mask.shape[1])


def save_token_view_png(path: str, title: list[str], cells: list[tuple[str, float]], width: int = 100) -> None:
    """The coloured token view as a picture: tokens wrapped at `width` characters, each on its A_t shade."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = []
    line = []
    used = 0
    for token, value in cells:
        if used + len(token) + 1 > width and line:
            rows = rows + [line]
            line = []
            used = 0
        line.append((used, token, value))
        used += len(token) + 1
    rows.append(line)
    fig = plt.figure(figsize=(0.085 * width, 0.3 * (len(rows) + len(title)) + 0.3))
    for y, text in enumerate(title):
        fig.text(0.01, 1 - (y + 0.8) / (len(rows) + len(title) + 1), text, family="monospace", fontsize=8)
    for y, line in enumerate(rows, start=len(title)):
        for x, token, value in line:
            fig.text(0.01 + 0.98 * x / width, 1 - (y + 0.8) / (len(rows) + len(title) + 1), token, family="monospace",
                     fontsize=9, bbox={"facecolor": [c / 255 for c in shade(value)], "edgecolor": "none", "pad": 1})
    fig.savefig(path + ".tmp.png", dpi=130)
    plt.close(fig)
    os.replace(path + ".tmp.png", path)


def print_summary(summary: dict, tokenizer, shown) -> None:
    """The last step's most credited response, coloured by A_t (also saved as token_advantages.png); accuracies."""
    print("\n" + "=" * 72)
    if shown is not None:
        step, prompts, scores, response_ids, token_mask, advantages = shown
        b, g = most_credited(token_mask, advantages)
        cells = token_cells(tokenizer, response_ids[b, g], token_mask[b, g], advantages[b, g])
        verdicts = [("PASS " if s > 0 else "FAIL ") + r["description"]
                    for r, s in zip(prompts[b]["rubrics"], scores[b, g])]
        print(f"step {step}, the response with the most token-level credit; colour = combined advantage A_t "
              f"(green up, red down):\n  {prompts[b]['prompt']}\n  " + " | ".join(verdicts) + "\n  "
              + token_view(cells, colour=True) + "\n")
        save_token_view_png(os.path.join(os.path.dirname(summary["outputs"]["summary.json"]), "token_advantages.png"),
                            [prompts[b]["prompt"], " | ".join(verdicts)], cells)
    for name in ("start", "final", "final_unseen_combos"):
        if name in summary:
            r = summary[name]
            print(f"{name:>20}: instruction acc {r['instruction_accuracy']:.3f} | "
                  f"rubric acc {r['rubric_accuracy']:.3f} (sampled) | "
                  f"greedy {r['greedy']['instruction_accuracy']:.3f} / {r['greedy']['rubric_accuracy']:.3f}")
    print(f"{'wall time':>20}: {summary['wall_seconds']:.0f} s"
          + (f" | COLLAPSE {summary['collapse']}" if summary["collapse"] else ""))
    print(f"{'outputs':>20}: {os.path.dirname(summary['outputs']['summary.json'])}/")


def step_metrics(rubric_scores, rubric_mask, resp_reward, resp_adv, tok_adv, relevance, response_ids, token_mask,
                 eos_id: int) -> dict:
    """What one RL step logs about its rewards, advantages and responses (the loss side is added by train.py).

    Shapes:  rubric_scores (B, G, K) ±1;  rubric_mask (B, K);  resp_reward, resp_adv (B, G);  tok_adv (B, G, T);
             relevance (B, G, K, T);  response_ids, token_mask (B, G, T)
    """
    passed = (rubric_scores > 0) & rubric_mask[:, None, :]                       # (B, G, K)
    return {
        "reward/mean": resp_reward.mean().item(),
        "reward/frac_zero_std": (resp_reward.std(dim=1) == 0).float().mean().item(),   # tied groups: no GRPO signal
        "rubric/pass_rate": (passed.sum() / (rubric_mask.sum() * rubric_scores.shape[1])).item(),
        "adv/resp_abs_mean": resp_adv.abs().mean().item(),
        "adv/token_abs_mean": (tok_adv.abs().sum() / token_mask.sum().clamp(min=1)).item(),
        # mean w over real (token, rubric) pairs
        "relevance/mean": (relevance.sum()
                           / (token_mask.sum(-1) * rubric_mask.sum(-1, keepdim=True)).sum().clamp(min=1)).item(),
        "completions/mean_length": token_mask.sum(-1).float().mean().item(),
        "completions/frac_truncated": (token_mask[..., -1] & (response_ids[..., -1] != eos_id)).float().mean().item()}


class CollapseGuard:
    """METHOD.md §10: responses shrinking towards EOS, or the pass rate falling, is an absorbing state. Compares the
    mean of the last WINDOW steps with the mean of the first WINDOW, so it speaks from step 2·WINDOW − 1 on: one
    step of a small batch is noise (2 prompts × 4 responses moved SmolLM2's pass rate from 0.25 to 0.08 and back).
    `state` is JSON-able and goes into the checkpoint, so a resumed run keeps its reference."""

    WINDOW = 10
    KEYS = ("completions/mean_length", "rubric/pass_rate")

    def __init__(self, state: dict | None = None):
        self.state = state or {"steps": 0, "first": [0.0, 0.0], "recent": []}

    def update(self, metrics: dict) -> str:
        """Record one step's metrics; a warning once the recent means have fallen, else ""."""
        row = [metrics[key] for key in self.KEYS]
        state = self.state
        if state["steps"] < self.WINDOW:
            state["first"] = [total + value / self.WINDOW for total, value in zip(state["first"], row)]
        state["steps"] = state["steps"] + 1
        state["recent"] = (state["recent"] + [row])[-self.WINDOW:]
        if state["steps"] < 2 * self.WINDOW:
            return ""
        length, passed = state["first"]
        recent = [sum(column) / self.WINDOW for column in zip(*state["recent"])]
        windows = f"(mean of the first {self.WINDOW} steps -> of the last {self.WINDOW})"
        if recent[0] < 0.4 * length:
            return f"mean response length fell from {length:.1f} to {recent[0]:.1f} {windows}"
        if recent[1] < 0.6 * passed:
            return f"rubric pass rate fell from {passed:.2f} to {recent[1]:.2f} {windows}"
        return ""
