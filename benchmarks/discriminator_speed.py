"""Time the discriminator's relevance inference per RL step against the toy policy's generation time.

At the toy preset (B = 16 prompts, G = 8 responses each) one RL step generates N = 128 responses with the
warm-start toy policy (policies.rollout.generate) and then scores all N·K (response, rubric)
pairs with the toy discriminator (discriminator.relevance, one chunked batched forward). Prints the median
time of each over several repeats and their ratio.
Target: relevance / generation <= 0.5 (relevance must not dominate an RL step).

Run:  python benchmarks/discriminator_speed.py [--threads 1] [--repeats 5]
      python benchmarks/discriminator_speed.py --policy smollm2 --repeats 3   (the smollm2 preset's step)
      --warm_start_steps 10 --policy_cache /tmp/toy_policy   (a briefly warmed-up policy when the cached one is
      missing and its full warm start is too slow to wait for; it rarely stops early, so its responses are longer)
"""

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import discriminator  # noqa: E402
import train  # noqa: E402
from policies import loading, toy  # noqa: E402
from policies.rollout import UNLIMITED, encode_prompts, generate  # noqa: E402
from relevance import build  # noqa: E402
from tasks import registry  # noqa: E402


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
    parser.add_argument("--policy", default="toy",
                        help="toy (Rubric World) | smollm2 (its preset's data and built discriminator)")
    parser.add_argument("--prompts", type=int, help="B (default: the preset's)")
    parser.add_argument("--group_size", type=int, help="G (default: the preset's)")
    parser.add_argument("--warm_start_steps", type=int, help="toy: override the policy's warm-start steps")
    parser.add_argument("--policy_cache", help="toy: where the policy is cached (default: toy.default_cache_dir())")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = train.parse_config([] if args.policy == "toy" else [args.policy])
    b_size = args.prompts or cfg.prompts_per_step
    g_size = args.group_size or cfg.group_size
    if args.policy == "toy":
        recipe = {"steps": args.warm_start_steps} if args.warm_start_steps is not None else None
        policy_model, tokenizer = toy.load_or_build_toy_policy(cache_dir=args.policy_cache, recipe=recipe)
        disc_model, disc_tokenizer = build.load_or_train_toy_discriminator()
    else:
        policy_model, tokenizer = loading.load_policy(cfg.policy, "cpu", "float32")
        disc_model, disc_tokenizer, _ = build.build_real_discriminator(cfg.policy, cfg.data)
    discriminator.check_same_tokenizer(disc_tokenizer, tokenizer)
    prompts = registry.load_splits(cfg.data)["train"][:b_size]
    prompt_ids = encode_prompts(tokenizer, prompts)
    generator = torch.Generator().manual_seed(0)
    rollout = lambda: generate(policy_model, tokenizer, prompt_ids, g_size, cfg.max_new_tokens,  # noqa: E731
                               cfg.max_batch_tokens or UNLIMITED, temperature=cfg.temperature, top_p=cfg.top_p,
                               top_k=cfg.top_k, generator=generator)
    response_ids, token_mask = rollout()                                          # (B, G, T)
    generate_ms = median_ms(rollout, args.repeats)
    relevance_ms = median_ms(lambda: discriminator.relevance(disc_model, disc_tokenizer, prompts, response_ids,
                                                             token_mask), args.repeats)
    pairs = sum(len(p["rubrics"]) for p in prompts) * g_size
    print(f"{args.policy}: B={b_size} G={g_size}: {pairs} (response, rubric) pairs, response tokens "
          f"{int(token_mask.sum())} (T={token_mask.shape[-1]}), {args.threads} thread(s), median of {args.repeats}")
    print(f"policy generation   {generate_ms:8.1f} ms per step")
    print(f"relevance inference {relevance_ms:8.1f} ms per step")
    print(f"ratio relevance / generation = {relevance_ms / generate_ms:.3f}   (target <= 0.5)")


if __name__ == "__main__":
    main()
