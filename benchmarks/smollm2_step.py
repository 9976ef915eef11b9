"""Seconds per RTT step with SmolLM2-135M-Instruct on IFEval prompts, by phase, against an estimate of the CPU's floor.

One step is train.py's: sample G responses for B prompts (policies.rollout.generate) -> judge with the IFEval
checkers -> relevance (uniform here: the policy's side; a discriminator adds one forward over N·K short sequences)
-> response and token advantages -> train.policy_update (log-probs, clipped loss, backward, AdamW; μ = 1).

Floor, measured on this machine first: the sustained rate of one float32 matmul the size of the model's layers
(FLOP/s) and of reading a large tensor (bytes/s).
  generation: per decoding step max(weight bytes / bandwidth, 2·params·rows / FLOP/s); the prompt prefill adds
              2·params·(prompt tokens) FLOPs, each prompt read once for its G responses. Weights are float32
              (4 bytes), read once per step for all rows.
  update:     6·(non-embedding params)·(prompt + response tokens) + 6·(LM-head params)·(response tokens) FLOPs
              (forward 2, backward 4 per parameter and token; the LM head runs on response tokens only).
Prints one line per step and a table of the timed steps' means (after --warmup untimed steps); --json writes it all.

Run:  OMP_NUM_THREADS=1 python benchmarks/smollm2_step.py --steps 4 --json results/smollm2_step_time.json
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import discriminator  # noqa: E402
import train  # noqa: E402
from normalize import group_advantages, token_advantages  # noqa: E402
from policies import loading  # noqa: E402
from policies.rollout import decode_responses, encode_prompts, generate  # noqa: E402
from rewards import response_reward, token_rewards  # noqa: E402
from rtt_grpo import combine_advantages  # noqa: E402
from runs.files import write_json  # noqa: E402
from tasks import ifeval  # noqa: E402


def machine_rates(size: int = 576, repeats: int = 20) -> tuple[float, float]:
    """(FLOP/s of a (2048 x size) @ (size x 4·size) float32 matmul, bytes/s of reading 256 MB), medians."""
    a = torch.randn(2048, size)
    b = torch.randn(size, 4 * size)
    big = torch.randn(64 * 1024 * 1024)
    flops = []
    reads = []
    for _ in range(repeats):
        tic = time.perf_counter()
        a @ b
        flops.append(2 * a.shape[0] * size * 4 * size / (time.perf_counter() - tic))
        tic = time.perf_counter()
        big.sum()
        reads.append(big.numel() * 4 / (time.perf_counter() - tic))
    return statistics.median(flops), statistics.median(reads)


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts_per_step", type=int, default=2)
    parser.add_argument("--group_size", type=int, default=4)
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3, help="timed steps")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (AdamW's state, allocations)")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    cfg = train.parse_config(["smollm2", "--group_size", str(args.group_size), "--prompts_per_step",
                              str(args.prompts_per_step), "--max_new_tokens", str(args.max_new_tokens),
                              "--relevance", "uniform", "--device", "cpu"])
    flop_rate, byte_rate = machine_rates()
    model, tokenizer, amp = loading.load_for_training(cfg.policy, "cpu", cfg.dtype)
    n_params = sum(p.numel() for p in model.parameters())
    head_params = model.get_output_embeddings().weight.numel()                    # tied to the input embeddings
    judge = ifeval.IFEvalJudge()
    prompts_all = ifeval.load_prompts(limit=args.prompts_per_step * (args.warmup + args.steps))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0, fused=True)   # as train.py
    rows = []
    for step in range(args.warmup + args.steps):
        prompts = prompts_all[step * args.prompts_per_step:(step + 1) * args.prompts_per_step]
        times = {}
        tic = time.perf_counter()
        prompt_ids = encode_prompts(tokenizer, prompts)
        model.eval()
        with amp():
            response_ids, token_mask = generate(model, tokenizer, prompt_ids, cfg.group_size, cfg.max_new_tokens,
                                                cfg.max_batch_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                                                top_k=cfg.top_k, generator=torch.Generator().manual_seed(step))
        times["generate"] = time.perf_counter() - tic
        tic = time.perf_counter()
        texts = decode_responses(tokenizer, response_ids, token_mask)
        rubric_scores, rubric_mask = judge(prompts, texts)                        # (B, G, K), (B, K)
        relevance = discriminator.uniform_relevance(prompts, response_ids, token_mask)   # (B, G, K, T)
        tok_adv = token_advantages("intra", token_rewards(rubric_scores, relevance), token_mask, rubric_mask,
                                   rubric_scores)                                 # (B, G, T)
        advantages = combine_advantages(group_advantages(response_reward(rubric_scores, rubric_mask)), tok_adv,
                                        cfg.lam)                                   # (B, G, T)
        times["judge+advantages"] = time.perf_counter() - tic
        tic = time.perf_counter()
        train.policy_update(model, None, optimizer, tokenizer, cfg, prompt_ids, response_ids, token_mask,
                            advantages, amp)
        times["update"] = time.perf_counter() - tic
        rows_n = len(prompt_ids) * cfg.group_size
        prompt_tokens = sum(len(p) for p in prompt_ids) * cfg.group_size
        response_tokens = int(token_mask.sum())
        decode_steps = token_mask.shape[-1]
        floor_generate = (decode_steps * max(4 * n_params / byte_rate, 2 * n_params * rows_n / flop_rate)
                          + 2 * n_params * prompt_tokens / cfg.group_size / flop_rate)  # a prompt is read once
        floor_update = (6 * (n_params - head_params) * (prompt_tokens + response_tokens)
                        + 6 * head_params * response_tokens) / flop_rate
        row = {"step": step, "seconds": round(sum(times.values()), 2), **{k: round(v, 2) for k, v in times.items()},
               "floor_generate": round(floor_generate, 2), "floor_update": round(floor_update, 2),
               "prompt_tokens": prompt_tokens, "response_tokens": response_tokens, "decode_steps": decode_steps}
        print(json.dumps(row) + ("  (warm-up, not counted)" if step < args.warmup else ""))
        if step >= args.warmup:
            rows.append(row)
    mean = {k: round(statistics.mean(r[k] for r in rows), 2) for k in rows[0] if k != "step"}
    summary = {"policy": "smollm2", "B": args.prompts_per_step, "G": args.group_size,
               "max_new_tokens": args.max_new_tokens, "threads": torch.get_num_threads(), "device": "cpu",
               "dtype": str(next(model.parameters()).dtype), "relevance": "uniform", "params": n_params,
               "machine": {"matmul_gflops": round(flop_rate / 1e9, 1), "read_gb_per_s": round(byte_rate / 1e9, 1)},
               "steps": rows, "mean": mean}
    print(f"\nmachine: {flop_rate / 1e9:.1f} GFLOP/s (float32 matmul), {byte_rate / 1e9:.1f} GB/s (read), "
          f"{summary['threads']} thread(s); {n_params / 1e6:.1f}M parameters")
    print(f"{'phase':>18} | {'seconds/step':>12} | {'floor':>7} | ratio")
    for phase, floor in (("generate", "floor_generate"), ("update", "floor_update")):
        print(f"{phase:>18} | {mean[phase]:12.2f} | {mean[floor]:7.2f} | {mean[phase] / mean[floor]:5.1f}x")
    print(f"{'judge+advantages':>18} | {mean['judge+advantages']:12.2f} |")
    print(f"{'total':>18} | {mean['seconds']:12.2f} | {mean['floor_generate'] + mean['floor_update']:7.2f} |")
    if args.json:
        write_json(args.json, summary)
    return summary


if __name__ == "__main__":
    main()
