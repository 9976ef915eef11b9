"""normalize.py: every vectorised function against a slow loop, and the properties METHOD.md §5 implies."""

import math
import statistics

import pytest
import torch

import normalize
from normalize import (TOKEN_NORMS, group_advantages, inter_sample_token_norm, intra_sample_token_norm,
                       rtt_advantages, rubric_mean_token_norm, rubric_softmax_token_norm, token_advantages)

EPS = 1e-6


# ----------------------------------------------------------------------------- slow, obviously-correct loops
def slow_group_advantages(rewards, eps=EPS):
    out = torch.zeros_like(rewards, dtype=torch.float64)
    for b in range(rewards.shape[0]):
        row = rewards[b].double().tolist()
        mean = sum(row) / len(row)
        std = statistics.stdev(row) if len(row) > 1 else 0.0
        for g, value in enumerate(row):
            out[b, g] = (value - mean) / (std + eps)
    return out


def zscores(values, eps=EPS):
    mean = sum(values) / len(values)
    std = statistics.pstdev(values)
    return [(v - mean) / (std + eps) for v in values]


def slow_intra(r, token_mask, rubric_mask, eps=EPS):
    b_size, g_size, k_size, t_size = r.shape
    out = torch.zeros(b_size, g_size, t_size, dtype=torch.float64)
    for b in range(b_size):
        rubrics = [k for k in range(k_size) if rubric_mask[b, k]]
        for g in range(g_size):
            tokens = [t for t in range(t_size) if token_mask[b, g, t]]
            if not tokens:
                continue
            for k in rubrics:
                for t, z in zip(tokens, zscores([float(r[b, g, k, t]) for t in tokens], eps)):
                    out[b, g, t] += z / len(rubrics)
    return out


def slow_inter(r, token_mask, rubric_mask, eps=EPS):
    b_size, g_size, k_size, t_size = r.shape
    out = torch.zeros(b_size, g_size, t_size, dtype=torch.float64)
    for b in range(b_size):
        rubrics = [k for k in range(k_size) if rubric_mask[b, k]]
        cells = [(g, t) for g in range(g_size) for t in range(t_size) if token_mask[b, g, t]]
        if not cells:
            continue
        for k in rubrics:
            for (g, t), z in zip(cells, zscores([float(r[b, g, k, t]) for g, t in cells], eps)):
                out[b, g, t] += z / len(rubrics)
    return out


def slow_rubric_mean(r, token_mask, rubric_mask, eps=EPS):
    b_size, g_size, k_size, t_size = r.shape
    out = torch.zeros(b_size, g_size, t_size, dtype=torch.float64)
    for b in range(b_size):
        rubrics = [k for k in range(k_size) if rubric_mask[b, k]]
        cells = [(g, t) for g in range(g_size) for t in range(t_size) if token_mask[b, g, t]]
        if not cells:
            continue
        means = [sum(float(r[b, g, k, t]) for k in rubrics) / len(rubrics) for g, t in cells]
        for (g, t), z in zip(cells, zscores(means, eps)):
            out[b, g, t] = z
    return out


def slow_rubric_softmax(r, token_mask, rubric_mask, scores, eps=EPS):
    b_size, g_size, k_size, t_size = r.shape
    out = torch.zeros(b_size, g_size, t_size, dtype=torch.float64)
    for b in range(b_size):
        rubrics = [k for k in range(k_size) if rubric_mask[b, k]]
        adv = {k: slow_group_advantages(scores[b, :, k][None], eps)[0] for k in rubrics}
        for g in range(g_size):
            for t in range(t_size):
                if not token_mask[b, g, t]:
                    continue
                weights = [float(r[b, g, k, t] * scores[b, g, k]) for k in rubrics]
                exps = [math.exp(w) for w in weights]
                out[b, g, t] = sum(e / sum(exps) * float(adv[k][g]) for e, k in zip(exps, rubrics))
    return out


# ----------------------------------------------------------------------------- random batches
def random_batch(seed, right_padded=False):
    """Random shapes, masks (incl. empty responses and padded rubrics), relevance (soft, binary, constant)."""
    gen = torch.Generator().manual_seed(seed)
    b, g, k, t = (int(torch.randint(lo, hi, (1,), generator=gen)) for lo, hi in ((1, 4), (1, 6), (1, 5), (1, 10)))
    if right_padded:
        lengths = torch.randint(0, t + 1, (b, g), generator=gen)
        token_mask = torch.arange(t) < lengths[..., None]                        # (B, G, T)
    else:
        token_mask = torch.rand(b, g, t, generator=gen) < 0.7                    # (B, G, T)
    rubric_mask = torch.rand(b, k, generator=gen) < 0.7                          # (B, K)
    rubric_mask[:, 0] = True                                                     # every prompt has a rubric
    kind = seed % 3
    relevance = torch.rand(b, g, k, t, generator=gen)                            # soft
    if kind == 1:
        relevance = (relevance > 0.6).float()                                    # binary
    if kind == 2:
        relevance[:, :, 0] = 0.4                                                 # a constant row per response
    scores = torch.where(torch.rand(b, g, k, generator=gen) < 0.5, -1.0, 1.0)    # (B, G, K)
    scores = scores * rubric_mask[:, None, :]                                    # 0 on padded rubrics
    rewards = scores[..., None] * relevance * token_mask[:, :, None, :]          # (B, G, K, T)
    return rewards, token_mask, rubric_mask, scores


SEEDS = range(12)


@pytest.mark.parametrize("seed", SEEDS)
def test_group_advantages_match_loop(seed):
    gen = torch.Generator().manual_seed(seed)
    rewards = torch.randint(0, 2, (3, 1 + seed % 6), generator=gen).float()
    torch.testing.assert_close(group_advantages(rewards).double(), slow_group_advantages(rewards), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("fast, slow", [(intra_sample_token_norm, slow_intra), (inter_sample_token_norm, slow_inter),
                                        (rubric_mean_token_norm, slow_rubric_mean)])
def test_token_norms_match_loop(seed, fast, slow):
    rewards, token_mask, rubric_mask, _ = random_batch(seed, right_padded=seed % 2 == 0)
    torch.testing.assert_close(fast(rewards, token_mask, rubric_mask).double(),
                               slow(rewards, token_mask, rubric_mask), atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("seed", SEEDS)
def test_rubric_softmax_matches_loop(seed):
    rewards, token_mask, rubric_mask, scores = random_batch(seed)
    torch.testing.assert_close(rubric_softmax_token_norm(rewards, token_mask, rubric_mask, scores).double(),
                               slow_rubric_softmax(rewards, token_mask, rubric_mask, scores), atol=2e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- properties
def test_group_advantages_ignore_reward_offset_and_scale():
    rewards = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(group_advantages(rewards), group_advantages(10 * rewards + 3), atol=1e-4, rtol=1e-4)


def test_tied_group_and_single_sample_give_zero_advantage_not_nan():
    assert torch.equal(group_advantages(torch.ones(2, 4)), torch.zeros(2, 4))
    assert torch.equal(group_advantages(torch.tensor([[1.0], [0.0]])), torch.zeros(2, 1))


def authors_reshape_intra(rewards, token_mask, rubric_mask, eps=EPS):
    """METHOD.md §7 defect 1 reproduced on purpose: [G, K, T] -> [K, G, T] by reshape instead of transpose."""
    b, g, k, t = rewards.shape
    scrambled = rewards.reshape(b, k, g, t).transpose(1, 2)                      # rows of other responses
    return intra_sample_token_norm(scrambled.contiguous(), token_mask, rubric_mask, eps)


@pytest.mark.parametrize("seed", SEEDS)
def test_changing_sample_j_never_changes_sample_i(seed):
    rewards, token_mask, rubric_mask, _ = random_batch(seed)
    before = intra_sample_token_norm(rewards, token_mask, rubric_mask)
    perturbed = rewards.clone()
    j = rewards.shape[1] - 1
    perturbed[:, j] = torch.rand(perturbed[:, j].shape, generator=torch.Generator().manual_seed(seed + 100))
    after = intra_sample_token_norm(perturbed, token_mask, rubric_mask)
    assert torch.equal(before[:, :j], after[:, :j])


def test_the_authors_reshape_defect_fails_the_independence_property():
    """The property above is strong enough to catch METHOD.md §7 defect 1 (it is exact only when K = 1 or G = 1)."""
    gen = torch.Generator().manual_seed(0)
    rewards = torch.rand(1, 3, 2, 6, generator=gen)                              # B=1, G=3, K=2, T=6
    token_mask = torch.ones(1, 3, 6, dtype=torch.bool)
    rubric_mask = torch.ones(1, 2, dtype=torch.bool)
    perturbed = rewards.clone()
    perturbed[:, 2] = torch.rand(1, 2, 6, generator=gen)
    before = authors_reshape_intra(rewards, token_mask, rubric_mask)
    after = authors_reshape_intra(perturbed, token_mask, rubric_mask)
    assert not torch.allclose(before[:, :2], after[:, :2])


@pytest.mark.parametrize("seed", SEEDS)
def test_intra_sums_to_zero_per_response_and_rubric(seed):
    rewards, token_mask, rubric_mask, _ = random_batch(seed)
    for k in range(rewards.shape[2]):
        only_k = torch.ones(rewards.shape[0], 1, dtype=torch.bool)
        per_rubric = intra_sample_token_norm(rewards[:, :, k:k + 1], token_mask, only_k)  # (B, G, T)
        torch.testing.assert_close(per_rubric.sum(-1), torch.zeros(per_rubric.shape[:2]), atol=1e-4, rtol=0)
    total = intra_sample_token_norm(rewards, token_mask, rubric_mask)
    torch.testing.assert_close(total.sum(-1), torch.zeros(total.shape[:2]), atol=1e-4, rtol=0)


def length_bias_batch():
    token_mask = (torch.arange(200) < torch.tensor([20, 200])[:, None])[None]   # (1, 2, 200)
    relevance = torch.zeros(1, 2, 1, 200)
    relevance[..., :5] = 1.0
    rewards = -relevance                                                          # both violate (s = −1)
    return rewards, token_mask, torch.ones(1, 1, dtype=torch.bool)


def test_length_bias_example_of_the_spec():
    rewards, token_mask, rubric_mask = length_bias_batch()
    inter_sums = inter_sample_token_norm(rewards, token_mask, rubric_mask).sum(-1)[0]
    intra_sums = intra_sample_token_norm(rewards, token_mask, rubric_mask).sum(-1)[0]
    assert inter_sums[0].item() == pytest.approx(-19.64, abs=0.01)
    assert inter_sums[1].item() == pytest.approx(19.64, abs=0.01)
    torch.testing.assert_close(intra_sums, torch.zeros(2), atol=1e-4, rtol=0)


@pytest.mark.parametrize("how", TOKEN_NORMS)
@pytest.mark.parametrize("seed", range(6))
def test_padding_never_leaks_and_gets_zero_advantage(how, seed):
    rewards, token_mask, rubric_mask, scores = random_batch(seed)
    garbage = torch.rand(rewards.shape, generator=torch.Generator().manual_seed(seed)) * 0.9
    pad_cells = ~(token_mask[:, :, None, :] & rubric_mask[:, None, :, None])     # (B, G, K, T)
    dirty = torch.where(pad_cells, garbage, rewards)
    dirty_scores = torch.where(rubric_mask[:, None, :], scores, torch.ones_like(scores))
    clean = token_advantages(how, rewards, token_mask, rubric_mask, scores)
    noisy = token_advantages(how, dirty, token_mask, rubric_mask, dirty_scores)
    torch.testing.assert_close(clean, noisy, atol=1e-5, rtol=1e-5)
    assert torch.all(clean[~token_mask] == 0)


@pytest.mark.parametrize("how", TOKEN_NORMS)
def test_edge_cases_are_finite(how):
    cases = [
        (torch.ones(1, 3, 2, 1), torch.ones(1, 3, 1, dtype=torch.bool)),           # one-token responses
        (torch.ones(1, 2, 1, 4), torch.zeros(1, 2, 4, dtype=torch.bool)),          # empty responses
        (torch.full((2, 1, 1, 5), 0.5), torch.ones(2, 1, 5, dtype=torch.bool)),    # G = 1, one rubric, constant
    ]
    for rewards, token_mask in cases:
        rubric_mask = torch.ones(rewards.shape[0], rewards.shape[2], dtype=torch.bool)
        scores = torch.ones(rewards.shape[:3])
        out = token_advantages(how, rewards, token_mask, rubric_mask, scores)
        assert torch.isfinite(out).all()
        if how in ("intra", "inter", "rubric_mean"):
            assert torch.equal(out, torch.zeros_like(out))


def test_intra_is_sign_times_zscore_of_relevance():
    """METHOD.md §5: with r = s·w, the intra-sample advantage of one rubric is s · zscore_t(w)."""
    w = torch.tensor([0.1, 0.9, 0.3, 0.0])
    for s in (1.0, -1.0):
        out = intra_sample_token_norm((s * w).view(1, 1, 1, 4), torch.ones(1, 1, 4, dtype=torch.bool),
                                      torch.ones(1, 1, dtype=torch.bool), eps=0.0)
        torch.testing.assert_close(out.view(4), s * (w - w.mean()) / w.std(correction=0))


def test_clear_errors_for_bad_input():
    rewards, token_mask, rubric_mask, scores = random_batch(0)
    with pytest.raises(ValueError, match="token_rewards must be"):
        intra_sample_token_norm(rewards[0], token_mask, rubric_mask)
    with pytest.raises(ValueError, match="token_mask must be a bool"):
        intra_sample_token_norm(rewards, token_mask.float(), rubric_mask)
    with pytest.raises(ValueError, match="rubric_mask must be a bool"):
        inter_sample_token_norm(rewards, token_mask, rubric_mask[:, :0])
    with pytest.raises(ValueError, match="float tensor"):
        intra_sample_token_norm(rewards.long(), token_mask, rubric_mask)
    with pytest.raises(ValueError, match="rewards must be"):
        group_advantages(torch.ones(4))
    with pytest.raises(ValueError, match="unknown token normalisation"):
        token_advantages("per-batch", rewards, token_mask, rubric_mask, scores)


# ---------------------------------------------------------------------------- the per-batch recipe (rtt_advantages)
def recipe_batch(seed: int = 0):
    """A batch with padded rubrics, ragged responses, an EOS at each response's end, soft relevance and ±1 scores."""
    g = torch.Generator().manual_seed(seed)
    b, gs, k, t = 2, 4, 3, 7
    lengths = torch.randint(2, t + 1, (b, gs), generator=g)                       # (B, G)
    token_mask = torch.arange(t) < lengths[..., None]                             # (B, G, T)
    eos_mask = torch.arange(t) == (lengths[..., None] - 1)                        # (B, G, T)  the last real token
    rubric_mask = torch.tensor([[True, True, True], [True, True, False]])         # (B, K)
    scores = (torch.randint(0, 2, (b, gs, k), generator=g) * 2 - 1).float() * rubric_mask[:, None, :]  # (B, G, K)
    relevance = torch.rand(b, gs, k, t, generator=g) * token_mask[:, :, None, :] * rubric_mask[:, None, :, None]
    reward = (scores > 0).float().mean(-1)                                        # (B, G)  any R
    return reward, scores, rubric_mask, relevance, token_mask, eos_mask


@pytest.mark.parametrize("norm", TOKEN_NORMS)
@pytest.mark.parametrize("threshold, eos_in", [(0.0, True), (0.5, False)])
def test_rtt_advantages_is_the_step_by_step_recipe(norm, threshold, eos_in):
    """The recipe equals its steps written out one by one (threshold, w = 0 at EOS, Â, r = s·w, Ã, A)."""
    reward, scores, rubric_mask, relevance, token_mask, eos_mask = recipe_batch()
    got = rtt_advantages(reward, scores, rubric_mask, relevance, token_mask, eos_mask, norm, 0.5, "add", threshold,
                         eos_in)
    w = (relevance >= threshold).float() if threshold > 0 else relevance
    w = w.masked_fill(eos_mask[:, :, None, :], 0.0)
    resp_adv = group_advantages(reward)
    token_term = token_mask if eos_in else token_mask & ~eos_mask
    tok_adv = token_advantages(norm, scores[..., None] * w, token_term, rubric_mask, scores)
    assert torch.equal(got.relevance, w) and torch.equal(got.response, resp_adv) and torch.equal(got.token, tok_adv)
    assert torch.equal(got.combined, (resp_adv[..., None] + 0.5 * tok_adv) * token_mask)
    assert torch.all(got.combined[~token_mask] == 0)


def test_rtt_advantages_lam_zero_is_grpo():
    reward, scores, rubric_mask, relevance, token_mask, eos_mask = recipe_batch(1)
    got = rtt_advantages(reward, scores, rubric_mask, relevance, token_mask, eos_mask, lam=0.0)
    assert torch.equal(got.combined, group_advantages(reward)[..., None].expand_as(token_mask) * token_mask)
    with pytest.raises(ValueError, match="'mix'"):
        normalize._combine(got.response, got.token, 1.5, "mix")


def test_rtt_advantages_refuses_what_would_silently_go_wrong():
    reward, scores, rubric_mask, relevance, token_mask, eos_mask = recipe_batch(2)
    with pytest.raises(ValueError, match="eos_mask must be a bool"):
        rtt_advantages(reward, scores, rubric_mask, relevance, token_mask, eos_mask.long())
    with pytest.raises(ValueError, match="relevance must be float weights"):
        rtt_advantages(reward, scores, rubric_mask, (relevance > 0.5).long(), token_mask, eos_mask)
    with pytest.raises(ValueError, match="token_mask must be a bool"):
        rtt_advantages(reward, scores, rubric_mask, relevance, token_mask.long(), eos_mask)
    for norm in ("rubric_softmax", "rubric_group"):                               # 0/1 scores instead of ±1
        with pytest.raises(ValueError, match=r"\+1 \(satisfied\) or -1"):
            rtt_advantages(reward, (scores > 0).float(), rubric_mask, relevance, token_mask, eos_mask, norm)


def test_a_one_hot_relevance_row_puts_minus_sqrt_n_minus_1_on_its_token():
    """METHOD.md §5: the intra-sample scale grows with the response length n, while |Â| <= (G − 1)/√G."""
    for n in (20, 2048):
        relevance = torch.zeros(1, 1, 1, n)
        relevance[..., 3] = 1.0
        adv = intra_sample_token_norm(-relevance, torch.ones(1, 1, n, dtype=torch.bool),
                                      torch.ones(1, 1, dtype=torch.bool), eps=0.0)[0, 0]
        torch.testing.assert_close(adv[3], torch.tensor(-(n - 1) ** 0.5))
        torch.testing.assert_close(adv[0], torch.tensor((n - 1) ** -0.5))
    assert group_advantages(torch.tensor([[1.0] + [0.0] * 7]), eps=0.0).abs().max() <= 7 / 8 ** 0.5 + 1e-6


def test_rubric_softmax_is_zero_not_nan_for_a_prompt_without_a_real_rubric():
    scores = torch.tensor([[[1.0, -1.0], [-1.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]])    # (B=2, G=2, K=2)
    rubric_mask = torch.tensor([[True, True], [False, False]])                      # prompt 1: no real rubric
    token_mask = torch.ones(2, 2, 3, dtype=torch.bool)
    adv = rubric_softmax_token_norm(scores[..., None] * torch.ones(2, 2, 2, 3), token_mask, rubric_mask, scores)
    assert not adv.isnan().any() and torch.all(adv[1] == 0)
