"""Seconds per RL step with SmolLM2-135M-Instruct on IFEval prompts: train.py, TRL's GRPOTrainer, and RTT in TRL
(engines/trl_rtt.py), with the same B, G, new tokens, threads and device, in one run — read the ratios. Both TRL
runs are engines/train_trl.py's trainer; TRL's GRPO is its --lam 0, where TRL's advantages pass untouched (the weights
equal GRPOTrainer's bit for bit: tests/test_trl_rtt.py).

Each trainer runs 1 warm-up step and --steps timed steps. train.py: its own per-step phase times (generate, judge,
relevance, update) from metrics.jsonl; TRL: the wall time from the start to the end of each optimiser step
(generation, scoring, the token term, loss, backward, AdamW). RTT runs with --relevance discriminator: a token
classifier on SmolLM2's own backbone with an untrained head, so its forward costs what a trained one costs (the
benchmark measures cost, not relevance); train.py reads the same discriminator.

Run:  OMP_NUM_THREADS=2 python benchmarks/trl_step.py --steps 3 --json results/trl_step.json
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import train  # noqa: E402
from discriminator import save_discriminator  # noqa: E402
from engines import train_trl  # noqa: E402
from policies.loading import load_policy  # noqa: E402
from runs.files import read_jsonl, write_json  # noqa: E402
from transformers import AutoModelForTokenClassification, TrainerCallback  # noqa: E402


class StepClock(TrainerCallback):
    """Wall seconds of every optimiser step (generation and scoring happen inside the step in TRL)."""

    def __init__(self):
        self.seconds = []
        self.started = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds.append(time.perf_counter() - self.started)


def untrained_discriminator(out_dir: str) -> str:
    """A token classifier on the policy's backbone with a fresh one-output head, saved where train.py reads it."""
    policy, tokenizer = train.load(lambda: load_policy("smollm2", "cpu", "float32"))
    model = AutoModelForTokenClassification.from_pretrained(policy.name_or_path, num_labels=1)
    save_discriminator(model, tokenizer, out_dir, {"data": "ifeval"})
    return out_dir


def run_train_py(flags: list[str], steps: int, out_dir: str) -> dict:
    cfg = train.parse_config(["smollm2", *flags, "--max_steps", str(steps + 1), "--final_eval", "False",
                              "--eval_every", "0", "--sample_every", "0", "--out_dir", out_dir, "--device", "cpu"])
    train.train(cfg)
    metrics = read_jsonl(os.path.join(out_dir, "metrics.jsonl"))[1:]             # the first step warms up
    return {"step_seconds": [m["time/step"] for m in metrics],
            "phases": {k: statistics.mean(m[k] for m in metrics) for k in metrics[0] if k.startswith("time/")},
            "response_tokens": [m["completions/mean_length"] * cfg.prompts_per_step * cfg.group_size
                                for m in metrics]}


def run_trl(flags: list[str], steps: int, out_dir: str) -> dict:
    """engines/train_trl.py's trainer for these flags (--lam 0: TRL's GRPO exactly), timed step by step."""
    cfg, _ = train_trl.parse(["smollm2", *flags, "--max_steps", str(steps + 1), "--out_dir", out_dir,
                              "--device", "cpu", "--ckpt_every", str(10 ** 6)])
    clock = StepClock()
    trainer = train_trl.build_trainer(cfg, callbacks=(clock,))
    trainer.train()
    lengths = [entry["completions/mean_length"] for entry in trainer.state.log_history if "completions/mean_length"
               in entry][1:]
    return {"step_seconds": clock.seconds[1:],
            "response_tokens": [length * cfg.prompts_per_step * cfg.group_size for length in lengths]}


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per trainer (after one warm-up step)")
    parser.add_argument("--prompts_per_step", type=int, default=2)
    parser.add_argument("--group_size", type=int, default=4)
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    flags = ["--data", "ifeval", "--prompts_per_step", str(args.prompts_per_step), "--group_size",
             str(args.group_size), "--max_new_tokens", str(args.max_new_tokens)]
    work = tempfile.mkdtemp(prefix="trl_step_")
    discriminator_dir = untrained_discriminator(os.path.join(work, "discriminator"))
    rtt_flags = ["--relevance", "discriminator", "--discriminator", discriminator_dir]
    results = {"train.py RTT": run_train_py(flags + rtt_flags, args.steps, os.path.join(work, "train_py")),
               "TRL GRPO": run_trl(flags + ["--lam", "0"], args.steps, os.path.join(work, "trl_grpo")),
               "TRL RTT": run_trl(flags + rtt_flags, args.steps, os.path.join(work, "trl_rtt"))}
    base = statistics.mean(results["TRL GRPO"]["step_seconds"])
    print(f"\nSmolLM2-135M-Instruct, IFEval prompts, B={args.prompts_per_step} G={args.group_size} "
          f"max_new_tokens={args.max_new_tokens}, CPU, {torch.get_num_threads()} threads, {args.steps} timed steps")
    print(f"{'trainer':>14} | s/step (mean) | × TRL GRPO | response tokens/step | s per 100 response tokens")
    for name, result in results.items():
        seconds = statistics.mean(result["step_seconds"])
        tokens = statistics.mean(result["response_tokens"])
        result.update(mean_step_seconds=seconds, ratio_to_trl_grpo=seconds / base, mean_response_tokens=tokens)
        print(f"{name:>14} | {seconds:13.2f} | {seconds / base:10.2f} | {tokens:20.0f} | {100 * seconds / tokens:.2f}")
    summary = {"policy": "smollm2", "B": args.prompts_per_step, "G": args.group_size,
               "max_new_tokens": args.max_new_tokens, "threads": torch.get_num_threads(), "device": "cpu",
               "steps": args.steps, "results": results}
    if args.json:
        write_json(args.json, summary)
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
