"""rtt_grpo.py: the combined advantage and the clipped loss, against loops and hand-computed values."""

import math

import pytest
import torch

from rtt_grpo import combine_advantages, masked_mean, policy_loss


def slow_policy_loss(logp, old_logp, adv, mask, clip_low, clip_high, agg, ref_logp=None, kl_coef=0.0):
    per_seq, all_tokens = [], []
    for i in range(logp.shape[0]):
        terms = []
        for t in range(logp.shape[1]):
            if not mask[i, t]:
                continue
            ratio = math.exp(float(logp[i, t] - old_logp[i, t]))
            a = float(adv[i, t])
            j = min(ratio * a, min(max(ratio, 1 - clip_low), 1 + clip_high) * a)
            if ref_logp is not None:
                d = float(ref_logp[i, t] - logp[i, t])
                j -= kl_coef * (math.exp(d) - d - 1)
            terms.append(j)
        all_tokens += terms
        if terms:
            per_seq.append(sum(terms) / len(terms))
    if agg == "seq-mean-token-mean":
        return -(sum(per_seq) / max(len(per_seq), 1))
    return -(sum(all_tokens) / max(len(all_tokens), 1))


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("agg", ["seq-mean-token-mean", "token-mean"])
def test_policy_loss_matches_loop(seed, agg):
    gen = torch.Generator().manual_seed(seed)
    n, t = 5, 7
    logp = -torch.rand(n, t, generator=gen) * 3
    old_logp = logp + torch.randn(n, t, generator=gen) * 0.3
    ref_logp = logp + torch.randn(n, t, generator=gen) * 0.3
    adv = torch.randn(n, t, generator=gen)
    mask = torch.rand(n, t, generator=gen) < 0.7
    mask[0] = False                                                               # an empty sequence
    loss, _ = policy_loss(logp, old_logp, adv, mask, 0.2, 0.27, agg, ref_logp, kl_coef=0.1)
    assert loss.item() == pytest.approx(slow_policy_loss(logp, old_logp, adv, mask, 0.2, 0.27, agg, ref_logp, 0.1),
                                        abs=1e-5)


def test_clip_is_inactive_on_policy_so_gradient_is_vanilla_pg():
    gen = torch.Generator().manual_seed(0)
    logp = (-torch.rand(3, 6, generator=gen)).requires_grad_()
    adv = torch.randn(3, 6, generator=gen)
    mask = torch.rand(3, 6, generator=gen) < 0.8
    for agg in ("seq-mean-token-mean", "token-mean"):
        loss, metrics = policy_loss(logp, logp.detach(), adv, mask, agg=agg)
        (grad_ppo,) = torch.autograd.grad(loss, logp)
        (grad_pg,) = torch.autograd.grad(-masked_mean(logp * adv, mask, agg), logp)
        torch.testing.assert_close(grad_ppo, grad_pg)
        assert metrics["clip_frac"] == 0.0 and metrics["ratio_mean"] == pytest.approx(1.0)


def test_padded_tokens_get_zero_gradient():
    logp = torch.randn(2, 5, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    adv = torch.randn(2, 5)
    adv[~mask] = 1e6                                                             # garbage on padding
    loss, _ = policy_loss(logp, logp.detach() + 0.1, adv, mask)
    loss.backward()
    assert torch.all(logp.grad[~mask] == 0) and torch.all(logp.grad[mask] != 0)


def test_asymmetric_clip_higher_by_hand():
    """ρ = 1.25 with A > 0: inside [0.8, 1.27] (paper), clipped with the symmetric 0.2/0.2 (Llama run)."""
    logp = torch.full((1, 1), math.log(1.25), requires_grad=True)
    old_logp = torch.zeros(1, 1)
    adv = torch.ones(1, 1)
    mask = torch.ones(1, 1, dtype=torch.bool)
    loss, metrics = policy_loss(logp, old_logp, adv, mask, 0.2, 0.27)
    assert loss.item() == pytest.approx(-1.25) and metrics["clip_frac"] == 0.0
    (grad,) = torch.autograd.grad(loss, logp)
    assert grad.item() == pytest.approx(-1.25)
    loss, metrics = policy_loss(logp, old_logp, adv, mask, 0.2, 0.2)
    assert loss.item() == pytest.approx(-1.2) and metrics["clip_frac"] == 1.0
    (grad,) = torch.autograd.grad(loss, logp)
    assert grad.item() == 0.0                                                     # clipped: no push further


def test_negative_advantage_is_clipped_at_the_low_side_only():
    logp = torch.full((1, 2), 0.0)
    old_logp = torch.tensor([[math.log(1 / 0.7), math.log(1 / 1.5)]])            # ρ = 0.7 and 1.5
    adv = -torch.ones(1, 2)
    loss, metrics = policy_loss(logp, old_logp, adv, torch.ones(1, 2, dtype=torch.bool), 0.2, 0.27, "token-mean")
    # ρ = 0.7, A < 0: min(−0.7, −0.8) = −0.8 (clipped); ρ = 1.5, A < 0: min(−1.5, −1.27) = −1.5 (not clipped)
    assert loss.item() == pytest.approx((0.8 + 1.5) / 2) and metrics["clip_frac"] == 0.5


def test_kl_penalty_is_nonnegative_and_zero_at_the_reference():
    gen = torch.Generator().manual_seed(3)
    logp = -torch.rand(4, 6, generator=gen)
    mask = torch.ones(4, 6, dtype=torch.bool)
    _, metrics = policy_loss(logp, logp, torch.zeros(4, 6), mask, ref_logp=logp, kl_coef=0.5)
    assert metrics["kl_ref"] == 0.0
    _, metrics = policy_loss(logp, logp, torch.zeros(4, 6), mask, ref_logp=logp + torch.randn(4, 6, generator=gen),
                             kl_coef=0.5)
    assert metrics["kl_ref"] > 0 and math.isfinite(metrics["kl_ref"])


def test_combine_add_and_mix_by_hand():
    resp_adv = torch.tensor([[2.0]])
    tok_adv = torch.tensor([[[1.0, -1.0]]])
    assert torch.equal(combine_advantages(resp_adv, tok_adv, 0.5, "add"), torch.tensor([[[2.5, 1.5]]]))
    assert torch.equal(combine_advantages(resp_adv, tok_adv, 0.5, "mix"), torch.tensor([[[1.5, 0.5]]]))


def test_clear_errors_for_bad_input():
    with pytest.raises(ValueError, match="must be >= 0"):
        combine_advantages(torch.zeros(1, 2), torch.zeros(1, 2, 3), -0.1)
    with pytest.raises(ValueError, match="unknown combination method"):
        combine_advantages(torch.zeros(1, 2), torch.zeros(1, 2, 3), 0.5, "multiply")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        combine_advantages(torch.zeros(1, 2), torch.zeros(1, 2, 3), 1.5, "mix")
    with pytest.raises(ValueError, match="matching B, G"):
        combine_advantages(torch.zeros(1, 2), torch.zeros(2, 2, 3), 0.5)
    x = torch.zeros(2, 3)
    mask = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"must all be \(N, T\)"):
        policy_loss(x, x, torch.zeros(2, 4), mask)
    with pytest.raises(ValueError, match="token_mask must be bool"):
        policy_loss(x, x, x, mask.float())
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        policy_loss(x, x, x, mask, agg="sum")
    with pytest.raises(ValueError, match="needs ref_logp"):
        policy_loss(x, x, x, mask, kl_coef=0.1)
