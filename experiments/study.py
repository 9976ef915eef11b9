"""
experiments/study.py — when does token-level credit help? Grouping variants, the released code's behaviour, rubric
locality and sparsity, each a controlled comparison against GRPO-AON on the same seeds, plus reward hacking.

Questions (RESULTS.md, "When does token-level credit help?", states the hypotheses written before the runs):
  1. grouping  every token-level normalisation (intra = the paper, inter, rubric_mean, rubric_softmax, rubric_group),
               each with the trained discriminator and with uniform relevance, on Rubric World;
  2. released  the authors' pipeline as it runs (released_code.py: reshape across G and K, integer weights, EOS in);
  3. locality  prompts whose rubrics are decided by tokens one can point at ("local") vs about the whole response
               ("global"): GRPO-AON, RTT (intra) and the best variant of question 1, chosen on VALIDATION accuracy;
  4. sparsity  prompts with K = 3 vs K = 6 rubrics, the same three methods; the share of tied all-or-nothing groups
               at step 0 is reported;
  5. hacking   in every run, the share of sampled responses that repeat a rubric's word 3+ times unasked.
Every run: train.py's toy preset (the same warm-start policy and discriminator), 100 RL steps × 16 prompts × 8
responses, seed s = data order and sampling for every method; test accuracy on the regime's own test split.

Statistics: mean over seeds ± the half-width of a 95% Student-t interval; paired differences subtract GRPO-AON's
result of the same seed and regime. Runs are resumable (a finished run is skipped, an interrupted one resumes from
its checkpoint) and run two at a time, one thread each.

Outputs:  results/study/summary.json, results/study/summary.md (tables), results/study/paired.png (the figure:
          paired difference vs GRPO-AON with 95% intervals, one row per variant, one panel per regime),
          results/study/hacking.png, and every run under results/study/runs/<regime>/<method>/seed<s>/.
Run:      python experiments/study.py             (all questions, 5 seeds)
          python experiments/study.py --quick     (2 seeds x 40 steps, questions 1 and 2 with the discriminator only)
"""

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

from tqdm import tqdm

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
sys.path.insert(0, REPO_ROOT)
sys.path.insert(0, HERE)
from compare_methods import T_975, build_shared_models, mean_ci, run_command  # noqa: E402
from runs.files import read_jsonl, write_json, write_text  # noqa: E402
from runs.outputs import CollapseGuard  # noqa: E402

BASELINE = "grpo-aon"
NORMS = ("intra", "inter", "rubric_mean", "rubric_softmax", "rubric_group")
GROUPING = {BASELINE: ["--lam", "0"],
            **{f"{norm}-disc": ["--norm", norm] for norm in NORMS},
            **{f"{norm}-uniform": ["--norm", norm, "--relevance", "uniform"] for norm in NORMS}}
RELEASED = {"released-code": ["--norm", "released_code", "--eos_token_advantage", "True", "--relevance_threshold", "0"]}
REGIMES = {"all": "rubric_world", "local": "rubric_world:local", "global": "rubric_world:global",
           "k3": "rubric_world:k3", "k6": "rubric_world:k6"}


def plan(best: str | None, quick: bool) -> dict[str, dict[str, list[str]]]:
    """{regime: {method: train.py flags}}: questions 1 and 2 on "all"; 3 and 4 once the best variant is known."""
    first = {m: f for m, f in {**GROUPING, **RELEASED}.items()
             if not quick or m in (BASELINE, "intra-disc", "rubric_group-disc", "released-code")}
    runs = {"all": first}
    if best is not None and not quick:
        chosen = {m: GROUPING[m] for m in dict.fromkeys((BASELINE, "intra-disc", best))}
        runs.update({regime: chosen for regime in ("local", "global", "k3", "k6")})
    return runs


def run_dir(out: str, regime: str, method: str, seed: int) -> str:
    return os.path.join(out, "runs", regime, method, f"seed{seed}")


def command(regime: str, method: str, flags: list[str], seed: int, args) -> list[str]:
    directory = run_dir(args.out, regime, method, seed)
    checkpoint = os.path.join(directory, "ckpt.pt")
    return [sys.executable, os.path.join(REPO_ROOT, "train.py"), *flags, "--data", REGIMES[regime], "--seed", str(seed),
            "--max_steps", str(args.steps), "--eval_every", str(args.eval_every), "--ckpt_every", str(args.eval_every),
            "--sample_every", "50", "--out_dir", directory, "--device", "cpu",
            *(["--resume", checkpoint] if os.path.exists(checkpoint) else ["--overwrite", "true"])]


def run_all(runs: dict, args) -> list[str]:
    """Every (regime, method, seed) without a summary.json, `args.jobs` at a time; returns the failures."""
    pending = [(r, m, s) for s in range(args.seeds) for r, methods in runs.items() for m in methods
               if not os.path.exists(os.path.join(run_dir(args.out, r, m, s), "summary.json"))]
    failed = []
    with ThreadPoolExecutor(args.jobs) as pool, tqdm(total=len(pending), desc="runs", unit="run") as bar:
        futures = {pool.submit(run_command, run_dir(args.out, r, m, s), command(r, m, runs[r][m], s, args)): (r, m, s)
                   for r, m, s in pending}
        for future in as_completed(futures):
            regime, method, seed = futures[future]
            code, seconds = future.result()
            bar.update(1)
            bar.set_postfix(last=f"{regime}/{method}/seed{seed} {seconds:.0f}s")
            if code != 0:
                failed.append(f"{regime}/{method}/seed{seed} (exit {code}, see its log.txt)")
    return failed


def run_result(directory: str) -> dict | None:
    """The numbers of one finished run (None without a summary.json)."""
    if not os.path.exists(os.path.join(directory, "summary.json")):
        return None
    with open(os.path.join(directory, "summary.json")) as f:
        summary = json.load(f)
    metrics = read_jsonl(os.path.join(directory, "metrics.jsonl"))
    evals = read_jsonl(os.path.join(directory, "evals.jsonl"))
    tail = metrics[-10:]
    guard = CollapseGuard()                                      # the guard replayed: one definition for every run
    final = summary["final"]                                     # top level: the sampled numbers (eval.evaluate)
    return {"instruction_accuracy": final["instruction_accuracy"], "rubric_accuracy": final["rubric_accuracy"],
            "val_instruction_accuracy": evals[-1]["instruction_accuracy"],
            "start_instruction_accuracy": summary["start"]["instruction_accuracy"],
            "tied_groups_at_start": metrics[0]["reward/frac_zero_std"],
            "hacking_final": sum(m["hacking/repeated_rubric_word"] for m in tail) / len(tail),
            "length_final": sum(m["completions/mean_length"] for m in tail) / len(tail),
            "per_type": final["sampled" if "sampled" in final else "greedy"]["per_type"],
            "collapsed": any([guard.update(m) for m in metrics]), "wall_seconds": summary["wall_seconds"],
            "hacking_curve": [(m["step"], m["hacking/repeated_rubric_word"]) for m in metrics]}


SCALARS = ("instruction_accuracy", "rubric_accuracy", "val_instruction_accuracy", "start_instruction_accuracy",
           "tied_groups_at_start", "hacking_final", "length_final", "wall_seconds")


def aggregate(results: dict) -> dict:
    """{regime: {method: mean ± CI of every number, per-type means, paired differences vs GRPO-AON}}."""
    table = {}
    for regime, by_method in results.items():
        base = by_method.get(BASELINE, {})
        for method, by_seed in by_method.items():
            runs = list(by_seed.values())
            types = sorted({t for r in by_seed.values() for t in r["per_type"]})
            row = {"seeds": sorted(by_seed), **{key: mean_ci([r[key] for r in runs]) for key in SCALARS},
                   "per_type": {t: sum(r["per_type"].get(t, 0.0) for r in runs) / len(runs) for t in types},
                   "collapsed": sum(r["collapsed"] for r in runs)}
            shared = sorted(set(by_seed) & set(base))
            if method != BASELINE and shared:
                row["paired"] = {key: mean_ci([by_seed[s][key] - base[s][key] for s in shared])
                                 for key in ("instruction_accuracy", "rubric_accuracy", "val_instruction_accuracy")}
            table.setdefault(regime, {})[method] = row
    return table


def t_quantile(p: float, df: int) -> float:
    """Student-t quantile t_{p, df} for p > 0.5: bisection on the CDF, 0.5 + the density integrated from 0 by
    Simpson's rule (2,000 panels). Slow and plainly correct; tests check it against the printed table T_975."""
    scale = math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2))

    def cdf(t: float) -> float:
        panels = 2000
        h = t / panels
        ys = [scale * (1 + (i * h) ** 2 / df) ** (-(df + 1) / 2) for i in range(panels + 1)]
        return 0.5 + h / 3 * (ys[0] + ys[-1] + 4 * sum(ys[1:-1:2]) + 2 * sum(ys[2:-1:2]))

    low = 0.0
    high = 1.0
    while cdf(high) < p:
        high *= 2
    for _ in range(50):
        middle = (low + high) / 2
        if cdf(middle) < p:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def family_wise(table: dict, alpha: float = 0.05) -> dict:
    """{regime: {method: Δ test instruction accuracy vs GRPO-AON with a Bonferroni interval}}. A regime compares m
    variants with GRPO-AON; each interval is at level alpha / m, so the chance that ANY interval wrongly excludes 0
    stays <= alpha. Same standard error as the 95% interval: its half-width times
    t_{1 - alpha/2m, n-1} / t_{0.975, n-1}."""
    verdicts = {}
    for regime, rows in table.items():
        paired = {m: row["paired"]["instruction_accuracy"] for m, row in rows.items() if "paired" in row}
        for method, stat in paired.items():
            if stat["n"] < 2:
                continue
            quantile = t_quantile(1 - alpha / (2 * len(paired)), stat["n"] - 1)
            half_width = stat["ci95"] * quantile / T_975[stat["n"] - 2]
            verdict = "contains 0"
            if stat["mean"] - half_width > 0:
                verdict = "above 0"
            if stat["mean"] + half_width < 0:
                verdict = "below 0"
            verdicts.setdefault(regime, {})[method] = {"mean": stat["mean"], "ci_bonferroni": half_width,
                                                       "comparisons": len(paired), "verdict": verdict}
    return verdicts


def best_variant(table: dict) -> str:
    """The token-level variant with the highest mean VALIDATION instruction accuracy on Rubric World (never test)."""
    candidates = {m: row["val_instruction_accuracy"]["mean"] for m, row in table["all"].items() if m in GROUPING
                  and m != BASELINE}
    return max(candidates, key=candidates.get)


def markdown(table: dict) -> str:
    def cell(stat: dict, digits: int = 3) -> str:
        return f"{stat['mean']:.{digits}f}" + ("" if stat["ci95"] != stat["ci95"] else f" ± {stat['ci95']:.{digits}f}")

    lines = ["\n### every regime's comparisons at once (Bonferroni)\n",
             "Δ test instruction accuracy vs GRPO-AON with an interval at level 0.05 / m for the m variants of the "
             "regime, so that the chance of any interval wrongly excluding 0 is at most 0.05.\n",
             "| regime | method | Δ vs GRPO-AON | Bonferroni interval (m) | verdict |", "|---|---|---|---|---|"]
    for regime, rows in family_wise(table).items():
        lines += [f"| {regime} | {method} | {v['mean']:+.3f} | ± {v['ci_bonferroni']:.3f} ({v['comparisons']}) | "
                  f"{v['verdict']} |" for method, v in rows.items()]
    for regime, rows in table.items():
        lines += [f"\n### regime: {regime} ({REGIMES[regime]})\n",
                  "| method | seeds | test instruction acc | Δ vs GRPO-AON (paired) | test rubric acc | Δ rubric | "
                  "val instruction acc | tied groups at step 0 | repeats a rubric word | length | collapses |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for method, row in rows.items():
            paired = row.get("paired", {})
            lines.append(f"| {method} | {len(row['seeds'])} | {cell(row['instruction_accuracy'])} | "
                         f"{cell(paired['instruction_accuracy']) if paired else '–'} | "
                         f"{cell(row['rubric_accuracy'])} | "
                         f"{cell(paired['rubric_accuracy']) if paired else '–'} | "
                         f"{cell(row['val_instruction_accuracy'])} | "
                         f"{cell(row['tied_groups_at_start'], 2)} | {cell(row['hacking_final'], 2)} | "
                         f"{cell(row['length_final'], 1)} | {row['collapsed']} |")
        types = sorted({t for row in rows.values() for t in row["per_type"]})
        lines += ["", "| method (final test rubric accuracy per type) | " + " | ".join(types) + " |",
                  "|---|" + "---|" * len(types)]
        lines += [f"| {m} | " + " | ".join(f"{row['per_type'].get(t, float('nan')):.2f}" for t in types) + " |"
                  for m, row in rows.items()]
    return "\n".join(lines) + "\n"


def plot(table: dict, results: dict, out: str) -> list[str]:
    """paired.png: Δ test instruction accuracy vs GRPO-AON, 95% intervals, a row per variant, a panel per regime;
    hacking.png: share of sampled responses that repeat a rubric's word, over steps (Rubric World)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regimes = [r for r in REGIMES if r in table]
    fig, axes = plt.subplots(1, len(regimes), figsize=(4 * len(regimes), 0.45 * len(table["all"]) + 1.5),
                             sharex=True, squeeze=False)
    for ax, regime in zip(axes[0], regimes):
        rows = [(m, row["paired"]["instruction_accuracy"]) for m, row in table[regime].items() if "paired" in row]
        ax.errorbar([s["mean"] for _, s in rows], range(len(rows)), xerr=[0 if s["ci95"] != s["ci95"] else s["ci95"]
                                                                           for _, s in rows], fmt="o", capsize=3)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_yticks(range(len(rows)), [m for m, _ in rows], fontsize=8)
        ax.invert_yaxis()
        ax.set(title=f"{regime} ({REGIMES[regime]})", xlabel="Δ test instruction acc vs GRPO-AON")
    fig.tight_layout()
    paths = [os.path.join(out, "paired.png")]
    fig.savefig(paths[0], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 5))
    colours = plt.get_cmap("tab20").colors                        # 12 methods: no two share a colour
    for i, (method, by_seed) in enumerate(results["all"].items()):
        curves = [r["hacking_curve"] for r in by_seed.values()]
        length = min(len(c) for c in curves)
        steps = [curves[0][i][0] for i in range(length)]
        mean = [sum(c[i][1] for c in curves) / len(curves) for i in range(length)]
        smooth = [sum(mean[max(0, i - 9):i + 1]) / len(mean[max(0, i - 9):i + 1]) for i in range(length)]
        ax.plot(steps, smooth, label=method, color=colours[i], linestyle="--" if method == BASELINE else "-",
                linewidth=2.5 if method == BASELINE else 1.5)
    ax.set(xlabel="RL step", ylabel="share of sampled responses (10-step running mean)",
           title="responses that repeat a rubric's word 3+ times unasked (Rubric World)")
    ax.legend(fontsize=7, ncol=2)
    paths.append(os.path.join(out, "hacking.png"))
    fig.savefig(paths[1], dpi=120, bbox_inches="tight")
    plt.close(fig)
    return paths


def collect(runs: dict, args) -> dict:
    return {regime: {m: {s: r for s in range(args.seeds) if (r := run_result(run_dir(args.out, regime, m, s)))}
                     for m in methods} for regime, methods in runs.items()}


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--eval_every", type=int, default=50)
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (one thread each)")
    parser.add_argument("--out", default=os.path.join(REPO_ROOT, "results", "study"))
    parser.add_argument("--quick", action="store_true", help="2 seeds x 40 steps, 4 methods, question 1-2 only")
    parser.add_argument("--tables_only", action="store_true",
                        help="no runs: recompute the statistics and summary.md from the summary.json in --out")
    args = parser.parse_args(argv)
    if args.tables_only:
        return restate(args.out)
    if args.quick:
        args.seeds = 2
        args.steps = 40
        args.eval_every = 20
        args.out = args.out if not args.out.endswith(os.path.join("results", "study")) else args.out + "_quick"
    start = time.time()
    build_shared_models()
    failed = run_all(plan(None, args.quick), args)                               # questions 1 and 2
    table = aggregate(collect(plan(None, args.quick), args))
    best = best_variant(table) if not args.quick else None
    if best is not None:
        failed += run_all(plan(best, args.quick), args)                          # questions 3 and 4
    runs = plan(best, args.quick)
    results = collect(runs, args)
    table = aggregate(results)
    summary = {"best_variant_on_validation": best, "seeds": args.seeds, "steps": args.steps, "table": table,
               "family_wise": family_wise(table),
               "plan": runs, "failed": failed, "figures": plot(table, results, args.out),
               "wall_seconds": round(time.time() - start, 1), "machine": {"cpus": os.cpu_count(), "jobs": args.jobs}}
    write_json(os.path.join(args.out, "summary.json"), summary)
    write_text(os.path.join(args.out, "summary.md"), markdown(table))
    print(markdown(table) + f"\nbest variant on validation: {best}; wall time {summary['wall_seconds']:.0f} s"
          + (f"\nFAILED: {failed}" if failed else ""))
    return summary


def restate(out: str) -> dict:
    """The tables and the family-wise statistics again from a finished study's summary.json (no training)."""
    path = os.path.join(out, "summary.json")
    if not os.path.exists(path):
        raise SystemExit(f"--tables_only: no {path}; run the study first")
    with open(path) as f:
        summary = json.load(f)
    summary["family_wise"] = family_wise(summary["table"])
    write_json(path, summary)
    write_text(os.path.join(out, "summary.md"), markdown(summary["table"]))
    print(markdown(summary["table"]))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
