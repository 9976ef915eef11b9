"""
experiments/compare_methods.py — does RTT beat GRPO on Rubric World? Every method, several seeds, with intervals.

Paper:    paper §4 (main results: RTT-GRPO vs GRPO on instruction- and rubric-level accuracy) and the
          ablations its reviewers asked for (uniform / random relevance, inter-sample normalisation, λ).
Runs:     one `python train.py` per (method, seed), equal steps and equal samples for every method, seeds
          run in parallel processes (one thread each). Finished runs are skipped and interrupted ones resume
          from their checkpoint, so the script can be stopped and restarted at any time.
Outputs:  results/summary.json, results/summary.md (table + paired differences), results/curves.png
          (validation accuracy vs step), results/length.png (response length vs step: the length bias of
          inter-sample normalisation made visible), and every run's own directory under results/runs/.

Statistics: mean over seeds ± the half-width of a 95% Student-t interval (n − 1 degrees of freedom).
          Paired comparisons subtract GRPO-AON's result of the SAME seed (same data order, same sampler
          seed, same start policy) before averaging, which removes the seed-to-seed noise the two share.

Demo:     python experiments/compare_methods.py --quick        (3 methods × 2 seeds, short runs)
          python experiments/compare_methods.py                (every method × 5 seeds)
"""

import argparse
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

from tqdm import tqdm

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
from runs.files import read_jsonl, write_json, write_text  # noqa: E402

# name -> train.py flags on top of the toy preset. "rtt" is the paper's setting (trained discriminator, intra-sample,
# add, λ = 0.5, AON) with the toy preset's binary relevance (w >= 0.5) and its end-of-sequence token left to the
# response advantage; "rtt-soft" keeps the soft weights, "rtt-eos" gives the end-of-sequence token a token advantage.
METHODS = {
    "grpo-aon": ["--lam", "0", "--reward", "aon"],
    "grpo-mean": ["--lam", "0", "--reward", "mean"],
    "rtt": ["--relevance", "discriminator"],
    "rtt-soft": ["--relevance", "discriminator", "--relevance_threshold", "0"],
    "rtt-eos": ["--relevance", "discriminator", "--eos_token_advantage", "True"],
    "rtt-oracle": ["--relevance", "oracle"],
    "rtt-uniform": ["--relevance", "uniform"],
    "rtt-random": ["--relevance", "random"],
    "rtt-inter": ["--relevance", "discriminator", "--norm", "inter"],
    "rtt-lam0.25": ["--relevance", "discriminator", "--lam", "0.25"],
    "rtt-lam1": ["--relevance", "discriminator", "--lam", "1.0"],
    "rtt-mix": ["--relevance", "discriminator", "--method", "mix"],
}
BASELINE = "grpo-aon"
QUICK = {"methods": ["grpo-aon", "rtt", "rtt-uniform"], "seeds": 2, "steps": 40}

# two-sided 95% Student-t quantiles t_{0.975, df}, df = 1..30 (standard tables); 1.96 beyond
T_975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042]


def mean_ci(values: list[float]) -> dict:
    """Mean and 95% t-interval half-width over seeds (half-width NaN for a single seed).

    >>> stat = mean_ci([0.1, 0.2, 0.3])
    >>> round(stat["mean"], 4), round(stat["ci95"], 4), stat["n"]
    (0.2, 0.2484, 3)
    """
    n = len(values)
    if n == 0:
        return {"mean": float("nan"), "ci95": float("nan"), "n": 0}
    mean = sum(values) / n
    if n == 1:
        return {"mean": mean, "ci95": float("nan"), "n": 1}
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    quantile = T_975[n - 2] if n - 1 <= len(T_975) else 1.96
    return {"mean": mean, "ci95": quantile * std / math.sqrt(n), "n": n}


# ----------------------------------------------------------------------------- running
def run_dir(out: str, method: str, seed: int) -> str:
    return os.path.join(out, "runs", method, f"seed{seed}")


def train_command(method: str, seed: int, args) -> list[str]:
    """The exact train.py command of one run (written to the run's log)."""
    directory = run_dir(args.out, method, seed)
    command = [sys.executable, os.path.join(REPO_ROOT, "train.py"), *METHODS[method], "--seed", str(seed),
               "--max_steps", str(args.steps), "--eval_every", str(args.eval_every), "--ckpt_every",
               str(args.eval_every), "--out_dir", directory, "--device", "cpu"]
    checkpoint = os.path.join(directory, "ckpt.pt")
    return command + (["--resume", checkpoint] if os.path.exists(checkpoint) else ["--overwrite"])


def run_one(method: str, seed: int, args) -> tuple[str, int, int, float]:
    """Run train.py in a child process with one thread; its output goes to the run's log.txt."""
    code, seconds = run_command(run_dir(args.out, method, seed), train_command(method, seed, args))
    return method, seed, code, seconds


def run_command(directory: str, command: list[str]) -> tuple[int, float]:
    """Run one command with one thread, its output appended to directory/log.txt: (exit code, seconds)."""
    os.makedirs(directory, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    start = time.time()
    with open(os.path.join(directory, "log.txt"), "a") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT).returncode
    return code, time.time() - start


def build_shared_models() -> None:
    """Warm-start policy and toy discriminator are built once, before the parallel runs read them."""
    from policies import toy
    from relevance import build
    toy.load_or_build_toy_policy()
    build.load_or_train_toy_discriminator()


# ----------------------------------------------------------------------------- aggregation
def run_result(directory: str, target: float) -> dict | None:
    """The numbers of one finished run, or None when it has no summary yet."""
    summary_path = os.path.join(directory, "summary.json")
    if not os.path.exists(summary_path):
        return None
    with open(summary_path) as f:
        summary = json.load(f)
    metrics = read_jsonl(os.path.join(directory, "metrics.jsonl"))
    evals = (read_jsonl(os.path.join(directory, "evals.jsonl"))
             if os.path.exists(os.path.join(directory, "evals.jsonl")) else [])
    tail = metrics[-10:]
    reached = [e["step"] for e in evals if e["instruction_accuracy"] >= target]
    return {
        "instruction_accuracy": summary["final"]["instruction_accuracy"],
        "rubric_accuracy": summary["final"]["rubric_accuracy"],
        "greedy_instruction_accuracy": summary["final"]["greedy"]["instruction_accuracy"],
        "unseen_combos_instruction_accuracy": summary["final_unseen_combos"]["instruction_accuracy"],
        "start_instruction_accuracy": summary["start"]["instruction_accuracy"],
        "steps_to_target": reached[0] if reached else None,
        "final_length": sum(m["completions/mean_length"] for m in tail) / max(len(tail), 1),
        "collapsed": bool(summary.get("collapse")),
        "wall_seconds": summary["wall_seconds"],
        "curve": [(e["step"], e["instruction_accuracy"]) for e in evals],
        "length_curve": [(m["step"], m["completions/mean_length"]) for m in metrics],
    }


def aggregate(results: dict[str, dict[int, dict]], target: float) -> dict:
    """Per method: mean ± CI of every number over seeds; paired differences against the baseline."""
    table = {}
    for method, by_seed in results.items():
        runs = list(by_seed.values())
        reached = [r["steps_to_target"] for r in runs if r["steps_to_target"] is not None]
        table[method] = {
            "seeds": sorted(by_seed),
            **{key: mean_ci([r[key] for r in runs]) for key in
               ("instruction_accuracy", "rubric_accuracy", "greedy_instruction_accuracy",
                "unseen_combos_instruction_accuracy", "start_instruction_accuracy", "final_length", "wall_seconds")},
            "steps_to_target": {"median": sorted(reached)[len(reached) // 2] if reached else None,
                                "reached": len(reached), "of": len(runs), "target": target},
            "collapsed": sum(r["collapsed"] for r in runs),
        }
        if method != BASELINE and BASELINE in results:
            shared = sorted(set(by_seed) & set(results[BASELINE]))
            table[method]["paired_vs_" + BASELINE] = {
                key: mean_ci([by_seed[s][key] - results[BASELINE][s][key] for s in shared])
                for key in ("instruction_accuracy", "rubric_accuracy")}
    return table


def markdown(table: dict) -> str:
    """The README's results table and the paired comparisons."""
    def cell(stat: dict, digits: int = 3) -> str:
        return f"{stat['mean']:.{digits}f}" + ("" if math.isnan(stat["ci95"]) else f" ± {stat['ci95']:.{digits}f}")

    lines = ["| method | seeds | test instruction acc | test rubric acc | greedy instruction acc | unseen-combo "
             "instruction acc | steps to target | final length | collapses | wall s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for method, row in table.items():
        steps = row["steps_to_target"]
        reached = f"{steps['median']} ({steps['reached']}/{steps['of']})" if steps["median"] else f"– (0/{steps['of']})"
        lines.append(f"| {method} | {len(row['seeds'])} | {cell(row['instruction_accuracy'])} | "
                     f"{cell(row['rubric_accuracy'])} | {cell(row['greedy_instruction_accuracy'])} | "
                     f"{cell(row['unseen_combos_instruction_accuracy'])} | {reached} | "
                     f"{cell(row['final_length'], 1)} | "
                     f"{row['collapsed']} | {row['wall_seconds']['mean']:.0f} |")
    lines += ["", f"Paired difference against {BASELINE} (same seeds), mean ± 95% CI:", "",
              "| method | Δ instruction acc | Δ rubric acc |", "|---|---|---|"]
    for method, row in table.items():
        paired = row.get("paired_vs_" + BASELINE)
        if paired:
            lines.append(f"| {method} | {cell(paired['instruction_accuracy'])} | {cell(paired['rubric_accuracy'])} |")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, dict[int, dict]], out: str) -> list[str]:
    """Learning curves (mean line, min–max band over seeds) and response length vs step."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = plt.get_cmap("tab20").colors                   # 20 distinct colours: one per method
    style = {method: {"color": "black", "linestyle": "--"} if method == BASELINE else
             {"color": colours[(2 * i) % 20 + (2 * i) // 20], "linestyle": ":" if method == "rtt-uniform" else "-"}
             for i, method in enumerate(results)}

    def band(ax, curves: list[list[tuple[int, float]]], label: str, smooth: int = 1) -> None:
        length = min(len(c) for c in curves)
        steps = [curves[0][i][0] for i in range(length)]
        columns = [[c[i][1] for c in curves] for i in range(length)]
        if smooth > 1:                                     # running mean over `smooth` steps, per seed
            columns = [[sum(c[j][1] for j in range(max(0, i - smooth + 1), i + 1)) / (i + 1 - max(0, i - smooth + 1))
                        for c in curves] for i in range(length)]
        mean = [sum(col) / len(col) for col in columns]
        ax.plot(steps, mean, label=label, **style[label])
        ax.fill_between(steps, [min(col) for col in columns], [max(col) for col in columns], alpha=0.12,
                        color=style[label]["color"])

    paths = []
    fig, ax = plt.subplots(figsize=(8, 5))
    for method, by_seed in results.items():
        curves = [r["curve"] for r in by_seed.values() if r["curve"]]
        if curves:
            band(ax, curves, method)
    ax.set(xlabel="RL step", ylabel="validation instruction-level accuracy (sampled)",
           title="Rubric World: mean over seeds, band = min–max")
    ax.legend(fontsize=8)
    paths.append(os.path.join(out, "curves.png"))
    fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 5))
    for method in ("grpo-aon", "rtt", "rtt-inter"):
        curves = [r["length_curve"] for r in results.get(method, {}).values() if r["length_curve"]]
        if curves:
            band(ax, curves, method, smooth=10)
    ax.set(xlabel="RL step", ylabel="mean response length (tokens, 10-step running mean)",
           title="Intra- vs inter-sample token normalisation: response length")
    ax.legend()
    paths.append(os.path.join(out, "length.png"))
    fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
    plt.close(fig)
    return paths


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated, from: " + ", ".join(METHODS))
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..n-1 per method")
    parser.add_argument("--steps", type=int, default=100, help="RL steps per run (equal for every method)")
    parser.add_argument("--eval_every", type=int, default=20, help="steps between validation evals (curves)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="runs in parallel (1 thread each)")
    parser.add_argument("--target", type=float, default=0.2,
                        help="validation instruction accuracy for 'steps to target'")
    parser.add_argument("--out", default=os.path.join(REPO_ROOT, "results"), help="output directory")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK}")
    args = parser.parse_args(argv)
    if args.quick:
        args.methods = ",".join(QUICK["methods"])
        args.seeds = QUICK["seeds"]
        args.steps = QUICK["steps"]
        args.out = (args.out if args.out != os.path.join(REPO_ROOT, "results")
                    else os.path.join(REPO_ROOT, "results", "quick"))
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    if args.seeds < 1 or args.steps < 1 or args.jobs < 1:
        raise SystemExit("--seeds, --steps and --jobs must be >= 1")
    os.makedirs(args.out, exist_ok=True)
    start = time.time()
    build_shared_models()

    pending = [(m, s) for s in range(args.seeds) for m in methods
               if not os.path.exists(os.path.join(run_dir(args.out, m, s), "summary.json"))]
    print(f"{len(methods)} methods × {args.seeds} seeds × {args.steps} steps: {len(pending)} runs to do, "
          f"{args.jobs} at a time -> {args.out}")
    failed = []
    with ThreadPoolExecutor(args.jobs) as pool, tqdm(total=len(pending), desc="runs", unit="run") as bar:
        futures = [pool.submit(run_one, m, s, args) for m, s in pending]
        for future in as_completed(futures):
            method, seed, code, seconds = future.result()
            bar.update(1)
            bar.set_postfix(last=f"{method}/seed{seed} {seconds:.0f}s")
            if code != 0:
                failed.append(f"{method}/seed{seed} (exit {code}, see {run_dir(args.out, method, seed)}/log.txt)")

    results = {m: {s: r for s in range(args.seeds) if (r := run_result(run_dir(args.out, m, s), args.target))}
               for m in methods}
    table = aggregate(results, args.target)
    figures = plot(results, args.out)
    summary = {"methods": {m: METHODS[m] for m in methods}, "seeds": args.seeds, "steps": args.steps,
               "table": table, "failed": failed, "figures": figures, "wall_seconds": round(time.time() - start, 1),
               "machine": {"cpus": os.cpu_count(), "jobs": args.jobs, "threads_per_run": 1}}
    write_json(os.path.join(args.out, "summary.json"), summary)
    write_text(os.path.join(args.out, "summary.md"), markdown(table))
    print("\n" + markdown(table))
    print(f"wall time {summary['wall_seconds']:.0f} s; outputs in {args.out}/" +
          (f"\nFAILED: {failed}" if failed else ""))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
