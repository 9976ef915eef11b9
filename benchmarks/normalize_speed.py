"""Time intra- and inter-sample token normalisation at the paper's batch (B=64, G=8, K=8, T=2048) on CPU.

Prints the median ms per call, the speed-up over a per-(response, rubric) Python loop, and the cost relative to one
plain reduction (x.sum(-1)) over the same (B, G, K, T) tensor.
Target: <= 60x one plain reduction (the formulas are written plainly; speed is secondary).

Run:  python benchmarks/normalize_speed.py [--threads 1] [--repeats 5]
"""

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from normalize import inter_sample_token_norm, intra_sample_token_norm  # noqa: E402


def loop_intra(rewards, token_mask, rubric_mask, eps=1e-6):
    """The straightforward version: one masked z-score per (response, rubric) row."""
    b_size, g_size, k_size, t_size = rewards.shape
    out = torch.zeros(b_size, g_size, t_size)
    for b in range(b_size):
        rubrics = rubric_mask[b].nonzero().flatten().tolist()
        for g in range(g_size):
            valid = token_mask[b, g]
            for k in rubrics:
                row = rewards[b, g, k][valid]
                out[b, g, valid] += (row - row.mean()) / (row.std(correction=0) + eps) / len(rubrics)
    return out


def timed(fn, repeats):
    """Median wall time of `repeats` calls, in ms (after one warm-up call): robust to a busy machine."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=11)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    b = 64
    g = 8
    k = 8
    t = 2048
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, t + 1, (b, g), generator=gen)
    token_mask = torch.arange(t) < lengths[..., None]                              # (B, G, T)
    rubric_mask = torch.arange(k) < torch.randint(3, k + 1, (b,), generator=gen)[:, None]  # (B, K)
    scores = torch.where(torch.rand(b, g, k, generator=gen) < 0.5, -1.0, 1.0)
    rewards = scores[..., None] * torch.rand(b, g, k, t, generator=gen) * token_mask[:, :, None]  # (B, G, K, T)

    reduction_ms = timed(lambda: rewards.sum(-1), args.repeats)
    loop_ms = timed(lambda: loop_intra(rewards, token_mask, rubric_mask), 1)
    torch.testing.assert_close(loop_intra(rewards, token_mask, rubric_mask),
                               intra_sample_token_norm(rewards, token_mask, rubric_mask), atol=1e-3, rtol=1e-3)
    print(f"shape (B, G, K, T) = {(b, g, k, t)}, float32, {args.threads} thread(s), torch {torch.__version__}")
    print(f"{'x.sum(-1)':>28}: {reduction_ms:8.2f} ms")
    print(f"{'per-row loop (intra)':>28}: {loop_ms:8.2f} ms")
    for name, fn in (("intra_sample_token_norm", intra_sample_token_norm),
                     ("inter_sample_token_norm", inter_sample_token_norm)):
        ms = timed(lambda: fn(rewards, token_mask, rubric_mask), args.repeats)
        print(f"{name:>28}: {ms:8.2f} ms | {loop_ms / ms:6.1f}x faster than the loop | "
              f"{ms / reduction_ms:5.1f}x one plain reduction")


if __name__ == "__main__":
    main()
