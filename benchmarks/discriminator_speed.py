"""Time the discriminator's relevance inference per RL step against the toy policy's generation time.

At the toy preset (B = 16 prompts, G = 8 responses each) one RL step generates N = 128 responses with the
warm-start toy policy (rollout.generate) and then scores all N·K (response, rubric)
pairs with the toy discriminator (discriminator.relevance, one chunked batched forward). Prints the median
time of each over several repeats and their ratio.
Target: relevance / generation <= 0.5 (relevance must not dominate an RL step).

Run:  python benchmarks/discriminator_speed.py [--threads 1] [--repeats 5]
      --warm-start-steps 10 --policy-cache /tmp/toy_policy   (a briefly warmed-up policy when the cached one is
      missing and its full warm start is too slow to wait for; it rarely stops early, so its responses are longer)
"""

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import build_discriminator  # noqa: E402
import discriminator  # noqa: E402
import policies  # noqa: E402
import rubric_world  # noqa: E402
from rollout import encode_prompts, generate  # noqa: E402


def median_ms(fn, repeats: int) -> float:
    fn()                                                                          # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--prompts", type=int, default=16, help="B")
    parser.add_argument("--group-size", type=int, default=8, help="G")
    parser.add_argument("--warm-start-steps", type=int, help="override the policy's warm-start steps")
    parser.add_argument("--policy-cache", help="where the policy is cached (default: policies.default_cache_dir())")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    recipe = {"steps": args.warm_start_steps} if args.warm_start_steps is not None else None
    policy_model, tokenizer = policies.load_or_build_toy_policy(cache_dir=args.policy_cache, recipe=recipe)
    disc_model, disc_tokenizer = build_discriminator.load_or_train_toy_discriminator()
    relevance_fn = discriminator.make_relevance_fn(disc_model, disc_tokenizer, policy_tokenizer=tokenizer)
    prompts = rubric_world.make_splits(seed=0)["test"][:args.prompts]
    prompt_ids = encode_prompts(tokenizer, prompts)
    generator = torch.Generator().manual_seed(0)
    rollout = lambda: generate(policy_model, tokenizer, prompt_ids, args.group_size,  # noqa: E731
                               rubric_world.MAX_NEW_TOKENS, generator=generator)
    response_ids, token_mask = rollout()                                          # (B, G, T)
    generate_ms = median_ms(rollout, args.repeats)
    relevance_ms = median_ms(lambda: relevance_fn(prompts, response_ids, token_mask), args.repeats)
    pairs = sum(len(p["rubrics"]) for p in prompts) * args.group_size
    print(f"B={args.prompts} G={args.group_size}: {pairs} (response, rubric) pairs, response tokens "
          f"{int(token_mask.sum())} (T={token_mask.shape[-1]}), {args.threads} thread(s), median of {args.repeats}")
    print(f"policy generation   {generate_ms:8.1f} ms per step")
    print(f"relevance inference {relevance_ms:8.1f} ms per step")
    print(f"ratio relevance / generation = {relevance_ms / generate_ms:.3f}   (target <= 0.5)")


if __name__ == "__main__":
    main()
