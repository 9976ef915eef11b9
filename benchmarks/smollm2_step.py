"""Seconds per RTT step with SmolLM2-135M-Instruct on IFEval prompts (CPU-sized config), by phase.

One step = sample G responses for B prompts -> judge with the IFEval checkers -> relevance (uniform: this times
the policy side; a discriminator adds one forward over N·K sequences) -> response + token advantages ->
old log-probs -> clipped loss, backward, AdamW step. Prints one line per step and writes a JSON summary.

Run:  OMP_NUM_THREADS=1 python benchmarks/smollm2_step.py --steps 3 --json results/smollm2_step_time.json
"""

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import discriminator  # noqa: E402
import ifeval  # noqa: E402
import policies  # noqa: E402
import train  # noqa: E402
from rollout import decode_responses, encode_prompts, generate, response_logprobs  # noqa: E402
from normalize import group_advantages, token_advantages  # noqa: E402
from rewards import response_reward, token_rewards  # noqa: E402
from rtt_grpo import combine_advantages, policy_loss  # noqa: E402


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts_per_step", type=int, default=2)
    parser.add_argument("--group_size", type=int, default=4)
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    settings = train.PRESETS["smollm2"]
    model, tokenizer = policies.load_policy("smollm2", "cpu")
    judge = ifeval.IFEvalJudge()
    prompts_all = ifeval.load_prompts(limit=args.prompts_per_step * args.steps)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings["lr"], weight_decay=0.0)
    rows = []
    for step in range(args.steps):
        prompts = prompts_all[step * args.prompts_per_step:(step + 1) * args.prompts_per_step]
        times, tic = {}, time.perf_counter()
        prompt_ids = encode_prompts(tokenizer, prompts)
        model.eval()
        response_ids, token_mask = generate(
            model, tokenizer, prompt_ids, args.group_size, args.max_new_tokens, settings["max_batch_tokens"],
            temperature=settings["temperature"], top_p=settings["top_p"], top_k=settings["top_k"],
            generator=torch.Generator().manual_seed(step))                            # (B, G, T)
        times["generate"], tic = time.perf_counter() - tic, time.perf_counter()
        texts = decode_responses(tokenizer, response_ids, token_mask)
        rubric_scores, rubric_mask = judge(prompts, texts)                            # (B, G, K), (B, K)
        times["judge"], tic = time.perf_counter() - tic, time.perf_counter()
        relevance = discriminator.uniform_relevance(prompts, response_ids, token_mask)  # (B, G, K, T)
        resp_reward = response_reward(rubric_scores, rubric_mask)                     # (B, G)
        tok_adv = token_advantages("intra", token_rewards(rubric_scores, relevance), token_mask, rubric_mask,
                                   rubric_scores)                                     # (B, G, T)
        advantages = combine_advantages(group_advantages(resp_reward), tok_adv, 0.5)  # (B, G, T)
        times["advantages"], tic = time.perf_counter() - tic, time.perf_counter()
        flat_prompts = [ids for ids in prompt_ids for _ in range(args.group_size)]
        flat_ids, flat_mask = response_ids.flatten(0, 1), token_mask.flatten(0, 1)     # (N, T)
        model.train()
        with torch.no_grad():
            old_logp = response_logprobs(model, flat_prompts, flat_ids, flat_mask, tokenizer)
        logp = response_logprobs(model, flat_prompts, flat_ids, flat_mask, tokenizer)  # (N, T)
        loss, _ = policy_loss(logp, old_logp, advantages.flatten(0, 1), flat_mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        times["update"] = time.perf_counter() - tic
        row = {"step": step, "seconds": round(sum(times.values()), 2), **{k: round(v, 2) for k, v in times.items()},
               "mean_length": round(token_mask.sum(-1).float().mean().item(), 1),
               "rubric_pass_rate": round(((rubric_scores > 0) & rubric_mask[:, None]).sum().item()
                                         / (rubric_mask.sum().item() * args.group_size), 3)}
        rows.append(row)
        print(json.dumps(row))
    summary = {"policy": "smollm2", "B": args.prompts_per_step, "G": args.group_size,
               "max_new_tokens": args.max_new_tokens, "threads": torch.get_num_threads(), "device": "cpu",
               "relevance": "uniform", "steps": rows,
               "seconds_per_step_mean": round(sum(r["seconds"] for r in rows) / len(rows), 2)}
    print(f"mean {summary['seconds_per_step_mean']} s/step over {len(rows)} steps "
          f"(B={args.prompts_per_step}, G={args.group_size}, max_new_tokens={args.max_new_tokens}, "
          f"{summary['threads']} thread(s))")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json + ".tmp", "w") as f:
            json.dump(summary, f, indent=1)
        os.replace(args.json + ".tmp", args.json)
    return summary


if __name__ == "__main__":
    main()
