"""
released_code.py — the authors' released pipeline AS IT RUNS, reproduced on purpose so that it can be measured.

Never a default: train.py reaches it only with `--norm released_code` (and refuses that name unless the other two
behaviours below are asked for too). Everything else in this project avoids these three behaviours (METHOD.md §7).

What it reproduces, on the token rewards r = s·w (B, G, K, T) the training loop has built:
  1. The relevance weights land in an integer buffer (`zeros_like(input_ids)`): each w, a bf16 number there, is
     truncated to an integer, so every w below ~0.998 becomes 0 and soft relevance becomes a strict binary mask.
  2. The end-of-sequence token is inside the token term, with w = 0 there (train.py: --eos_token_advantage True).
  3. The [G, K, T] token rewards are turned into [K, G, T] with `reshape` instead of a transpose before the
     per-rubric normalisation: its row (k, g) is the flat row i = k·G + g of [G·K], i.e. response i // K's
     rubric i % K, normalised with response g's token mask. Each response's token advantage is built from other
     responses' rows; exact only when K = 1 or G = 1 (tests/test_released_code.py pins what it does).
Then the paper's intra-sample normalisation (normalize.intra_sample_token_norm) runs on the result.
"""

import torch

from normalize import intra_sample_token_norm

# Dimension legend (identical in every file):
#   B prompts in the batch        G responses per prompt (group)     N = B*G responses, flattened
#   K rubrics per prompt          T response tokens, right-padded    V vocabulary size


def integer_buffer(relevance: torch.Tensor) -> torch.Tensor:
    """Behaviour 1: w stored as bf16 and written into an int64 tensor (truncation toward 0), read back as floats.

    >>> integer_buffer(torch.tensor([0.3, 0.9, 0.997, 0.999, 1.0]))
    tensor([0., 0., 0., 1., 1.])
    """
    return relevance.to(torch.bfloat16).to(torch.int64).to(relevance.dtype)


def token_advantages(how: str, token_rewards: torch.Tensor, token_mask: torch.Tensor, rubric_mask: torch.Tensor,
                     rubric_scores: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """The token advantage Ã (B, G, T) the released code computes: behaviours 1 and 3, then intra-sample.
    Same signature as normalize.token_advantages; `how` must be "released_code"."""
    if how != "released_code":
        raise ValueError(f"released_code.token_advantages reproduces one pipeline, 'released_code', not {how!r}")
    relevance = integer_buffer(token_rewards * rubric_scores[..., None])         # (B, G, K, T)  w, truncated
    b, g, k, t = token_rewards.shape
    rows = (rubric_scores[..., None] * relevance).reshape(b, k, g, t)            # (B, K, G, T)  reshape, not transpose
    return intra_sample_token_norm(rows.transpose(1, 2).contiguous(), token_mask, rubric_mask, eps)  # (B, G, T)
