"""Properties that cross two concept files (normalize.py, rtt_grpo.py): λ = 0 is GRPO bit for bit, and uniform
relevance reduces RTT to GRPO exactly. tests/test_normalize.py and tests/test_rtt_grpo.py each need only their file."""

import pytest
import torch

from normalize import group_advantages, intra_sample_token_norm
from rtt_grpo import combine_advantages
from test_normalize import random_batch


@pytest.mark.parametrize("weight", [0.0, 0.3, 0.7, 1.0])
@pytest.mark.parametrize("seed", range(4))
def test_uniform_relevance_reduces_rtt_to_grpo_exactly(weight, seed):
    _, token_mask, rubric_mask, scores = random_batch(seed, right_padded=True)
    relevance = torch.full((*scores.shape, token_mask.shape[-1]), weight)       # (B, G, K, T)
    rewards = scores[..., None] * relevance                                      # (B, G, K, T)
    tok_adv = intra_sample_token_norm(rewards, token_mask, rubric_mask)
    assert torch.equal(tok_adv, torch.zeros_like(tok_adv))
    resp_adv = group_advantages(torch.rand(scores.shape[:2], generator=torch.Generator().manual_seed(seed)))
    for method in ("add", "mix"):
        combined = combine_advantages(resp_adv, tok_adv, lam=0.5, method=method)
        grpo = combine_advantages(resp_adv, tok_adv, lam=0.0, method=method)
        scale = 1.0 if method == "add" else 0.5
        assert torch.equal(combined, (scale * resp_adv)[..., None].expand_as(combined))
        assert torch.equal(grpo, resp_adv[..., None].expand_as(grpo))


def test_lambda_zero_is_grpo_bit_for_bit():
    gen = torch.Generator().manual_seed(1)
    resp_adv = torch.randn(3, 4, generator=gen)
    tok_adv = torch.randn(3, 4, 7, generator=gen) * 100
    for method in ("add", "mix"):
        assert torch.equal(combine_advantages(resp_adv, tok_adv, 0.0, method), resp_adv[..., None].expand(3, 4, 7))
