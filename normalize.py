"""
normalize.py — turn rewards into advantages by normalising inside a group.

Paper:    paper §3 "Group Partitioning Problem"; METHOD.md §3 steps 6–7 and §5.
Input:    response rewards R (B, G); token rewards r = s·w (B, G, K, T) with token_mask (B, G, T)
          and rubric_mask (B, K)
Output:   response advantage Â (B, G); token advantage Ã (B, G, T), 0 on padding

Groups:   response level: the G responses to one prompt (GRPO).
          token level, the paper's choice ("intra-sample"): the tokens of ONE response, for ONE rubric;
          the z-scores are then averaged over the prompt's rubrics. Because nothing crosses responses,
          a response's token advantage depends on that response alone, sums to 0 for every rubric,
          and a constant relevance row contributes exactly 0 (uniform relevance ⇒ RTT = GRPO).
          The baseline it replaces ("inter-sample") pools the tokens of all G responses per rubric,
          which adds a per-response constant to every token: long responses collect it many times.

Numerics: statistics over valid tokens only, population std, eps added, so tied groups, constant
          weights, one-token and empty responses give 0, never NaN. Each z-score centres twice: the
          second pass subtracts the mean of the deviations (0 in exact arithmetic), which removes the
          rounding error of the first mean, so a constant row is exactly 0 and uniform relevance gives
          GRPO bit for bit (one pass leaves ~1e-8, which (r − μ)/(σ + ε) turns into ~0.01).
          The masked sums are einsums: "bgkt,bgt->bgk" reads "for every (b, g, k), sum over t of r·valid".
          Intra-sample uses these per-response sums as they are; inter-sample adds them up over g.

Deviations (numbered as in METHOD.md §9, tagged `# DEVIATION(n)` in the code):
  1. The authors' code moves [G, K, T] to [K, G, T] with reshape instead of a transpose, mixing
     responses (METHOD.md §7 defect 1); we never reshape across G and K. tests/test_normalize.py proves that
     changing response j leaves response i's intra-sample advantage unchanged.
  3. The "rubric_mean" variant normalises per prompt; the authors' version spans several prompts
     (METHOD.md §7 defect 3).
  4. eps is added to the std (GRPO and token level) so a tied group gives 0 instead of NaN.
Not here: the authors' pipeline as it runs (the reshape, integer weights) is reproduced in released_code.py.

Demo:     python normalize.py     (the length-bias example of METHOD.md §5, every intermediate printed)
"""

from typing import NamedTuple

import torch

# Dimension legend (identical in every file):
#   B prompts in the batch        G responses per prompt (group)     N = B*G responses, flattened
#   K rubrics per prompt          T response tokens, right-padded    V vocabulary size


def group_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Response-level GRPO advantage: z-score of each reward inside its group of G.

    Â[b,g] = (R[b,g] − mean_g R[b,:]) / (std_g R[b,:] + ε),   std unbiased (divides by G − 1)

    Shapes:
        rewards   (B, G)  float   one scalar reward per sampled response
        returns   (B, G)  float   zero mean per row; an all-zero row if the group is tied (or G = 1)

    Example:
        >>> group_advantages(torch.tensor([[1., 0., 0., 1.]]), eps=0.0)
        tensor([[ 0.8660, -0.8660, -0.8660,  0.8660]])
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be (B, G), got shape {tuple(rewards.shape)}")
    if not rewards.is_floating_point():
        raise ValueError(f"rewards must be a float tensor, got {rewards.dtype}")
    centred = rewards - rewards.mean(dim=1, keepdim=True)                         # (B, G)
    # unbiased std; with G = 1 the deviation is 0, so dividing by max(G − 1, 1) keeps it 0 (not NaN)
    std = (centred.square().sum(dim=1, keepdim=True) / max(rewards.shape[1] - 1, 1)).sqrt()  # (B, 1)
    return centred / (std + eps)                                                  # (B, G)  DEVIATION(4)


def rubric_weights(rubric_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """c[b,k] = 1{k valid} / K_valid[b]: the weights of a mean over each prompt's valid rubrics. (B, K) -> (B, K)."""
    valid = rubric_mask.to(dtype)
    return valid / valid.sum(dim=1, keepdim=True).clamp(min=1)                    # (B, K)


def _check_token_inputs(token_rewards: torch.Tensor, token_mask: torch.Tensor, rubric_mask: torch.Tensor,
                        rubric_scores: torch.Tensor | None = None) -> None:
    if token_rewards.dim() != 4 or not token_rewards.is_floating_point():
        raise ValueError(f"token_rewards must be a float tensor (B, G, K, T), got {token_rewards.dtype} "
                         f"{tuple(token_rewards.shape)}")
    b, g, k, t = token_rewards.shape
    if token_mask.dtype != torch.bool or token_mask.shape != (b, g, t):
        raise ValueError(f"token_mask must be a bool (B, G, T) = {(b, g, t)}, "
                         f"got {token_mask.dtype} {tuple(token_mask.shape)}")
    if rubric_mask.dtype != torch.bool or rubric_mask.shape != (b, k):
        raise ValueError(f"rubric_mask must be a bool (B, K) = {(b, k)}, "
                         f"got {rubric_mask.dtype} {tuple(rubric_mask.shape)}")
    if rubric_scores is not None and rubric_scores.shape != (b, g, k):
        raise ValueError(f"rubric_scores must be (B, G, K) = {(b, g, k)}, got {tuple(rubric_scores.shape)}")
    if rubric_scores is not None:                     # the rubric-level variants z-score s: 0/1 scores lose the sign
        signed = (rubric_scores == 1) | (rubric_scores == -1)                     # (B, G, K)
        if not bool((signed | ~rubric_mask[:, None, :]).all()):                   # padded rubrics are never read
            raise ValueError("rubric_scores must be +1 (satisfied) or -1 (violated) on every valid rubric "
                             "(0/1 scores would silently flip the rubric-level advantages)")


def intra_sample_token_norm(token_rewards: torch.Tensor, token_mask: torch.Tensor, rubric_mask: torch.Tensor,
                            eps: float = 1e-6) -> torch.Tensor:
    """The paper's token advantage: z-score each (response, rubric) row over its own tokens, then average rubrics.

    Ã[b,g,t] = mean_{k valid} (r[b,g,k,t] − μ[b,g,k]) / (σ[b,g,k] + ε)
        μ, σ: mean and population std of r[b,g,k,:] over the valid tokens of response (b, g)

    Shapes:
        token_rewards  (B, G, K, T)  float  r = s·w
        token_mask     (B, G, T)     bool   real response tokens
        rubric_mask    (B, K)        bool   real rubrics
        returns        (B, G, T)     float  Ã; sums to 0 over each response, 0 on padding

    Example (one response, one rubric, relevance on the 2nd of 4 tokens, violated):
        >>> r = torch.tensor([[[[0., -1., 0., 0.]]]])
        >>> valid, one_rubric = torch.ones(1, 1, 4, dtype=torch.bool), torch.ones(1, 1, dtype=torch.bool)
        >>> intra_sample_token_norm(r, valid, one_rubric, eps=0.0)
        tensor([[[ 0.5774, -1.7321,  0.5774,  0.5774]]])
    """
    _check_token_inputs(token_rewards, token_mask, rubric_mask)
    valid = token_mask.to(token_rewards.dtype)                                    # (B, G, T)     1 on real tokens
    n = valid.sum(dim=-1).clamp(min=1)[..., None]                                 # (B, G, 1)     tokens per response
    mean = torch.einsum("bgkt,bgt->bgk", token_rewards, valid) / n                # (B, G, K)     μ = Σ_t r / n
    dev = token_rewards - mean[..., None]                                         # (B, G, K, T)  r − μ
    dev -= (torch.einsum("bgkt,bgt->bgk", dev, valid) / n)[..., None]             # second pass: mean(r − μ) ≈ 0
    dev *= valid[:, :, None, :]                                                   # 0 on padding
    std = (torch.einsum("bgkt,bgkt->bgk", dev, dev) / n).sqrt()                   # (B, G, K)     σ, population
    coef = rubric_weights(rubric_mask, dev.dtype)[:, None, :] / (std + eps)  # (B, G, K)  c_k/(σ_k + ε)  DEVIATION(4)
    return torch.einsum("bgkt,bgk->bgt", dev, coef)                          # (B, G, T)  Σ_k c_k (r − μ_k)/(σ_k + ε)


def inter_sample_token_norm(token_rewards: torch.Tensor, token_mask: torch.Tensor, rubric_mask: torch.Tensor,
                            eps: float = 1e-6) -> torch.Tensor:
    """Baseline token advantage: per (prompt, rubric), statistics over ALL tokens of all G responses.

    Ã[b,g,t] = mean_{k valid} (r[b,g,k,t] − μ[b,k]) / (σ[b,k] + ε)
        μ, σ: mean and population std of r[b,:,k,:] over every valid token of the prompt's G responses

    Length bias (METHOD.md §5): every token of response g is shifted by the same group constant, so the
    summed token advantage of a response grows linearly with its length.

    Shapes: as intra_sample_token_norm.
    """
    _check_token_inputs(token_rewards, token_mask, rubric_mask)
    valid = token_mask.to(token_rewards.dtype)                                    # (B, G, T)
    n = valid.sum(dim=(1, 2)).clamp(min=1)[:, None]                               # (B, 1)        tokens per group
    mean = torch.einsum("bgkt,bgt->bgk", token_rewards, valid).sum(dim=1) / n     # (B, K)        μ, over G and T
    dev = token_rewards - mean[:, None, :, None]                                  # (B, G, K, T)  r − μ
    dev -= (torch.einsum("bgkt,bgt->bgk", dev, valid).sum(dim=1) / n)[:, None, :, None]  # second pass
    dev *= valid[:, :, None, :]                                                   # 0 on padding
    std = (torch.einsum("bgkt,bgkt->bgk", dev, dev).sum(dim=1) / n).sqrt()        # (B, K)        σ, population
    coef = rubric_weights(rubric_mask, dev.dtype) / (std + eps)                   # (B, K)        DEVIATION(4)
    coef = coef[:, None, :].expand(dev.shape[:3])                                 # (B, G, K)     same for every g
    return torch.einsum("bgkt,bgk->bgt", dev, coef)                               # (B, G, T)


def rubric_mean_token_norm(token_rewards: torch.Tensor, token_mask: torch.Tensor, rubric_mask: torch.Tensor,
                           eps: float = 1e-6) -> torch.Tensor:
    """Ablation: average the token rewards over rubrics first, then z-score over the prompt's G responses.

    r̄[b,g,t] = mean_{k valid} r[b,g,k,t];   Ã[b,g,t] = (r̄[b,g,t] − μ[b]) / (σ[b] + ε)
        μ, σ: over every valid token of the G responses to prompt b.  DEVIATION(3): per prompt, where the
        authors' code pools blocks that span several prompts.

    Shapes: as intra_sample_token_norm.
    """
    _check_token_inputs(token_rewards, token_mask, rubric_mask)
    c = rubric_weights(rubric_mask, token_rewards.dtype)                          # (B, K)
    rubric_mean = torch.einsum("bgkt,bk->bgt", token_rewards, c)                  # (B, G, T)     r̄
    valid = token_mask.to(token_rewards.dtype)                                    # (B, G, T)
    n = valid.sum(dim=(1, 2)).clamp(min=1)[:, None, None]                         # (B, 1, 1)
    mean = (rubric_mean * valid).sum(dim=(1, 2), keepdim=True) / n                # (B, 1, 1)     μ
    dev = rubric_mean - mean                                                      # (B, G, T)     r̄ − μ
    dev -= (dev * valid).sum(dim=(1, 2), keepdim=True) / n                        # second pass
    dev *= valid                                                                  # 0 on padding
    std = ((dev * dev).sum(dim=(1, 2), keepdim=True) / n).sqrt()                  # (B, 1, 1)     σ
    return dev / (std + eps)                                                      # (B, G, T)     DEVIATION(4)


def rubric_group_advantages(rubric_scores: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Â_k[b,g]: the GRPO advantage of each rubric's own verdict, z-scored over the G responses.
    Shapes: (B, G, K) -> (B, G, K)"""
    b_size, _, k_size = rubric_scores.shape
    per_rubric = group_advantages(rubric_scores.transpose(1, 2).flatten(0, 1), eps)  # (B·K, G)  DEVIATION(1): transpose
    return per_rubric.unflatten(0, (b_size, k_size)).transpose(1, 2)              # (B, G, K)


def rubric_softmax_token_norm(token_rewards: torch.Tensor, token_mask: torch.Tensor, rubric_mask: torch.Tensor,
                              rubric_scores: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Ablation: a GRPO advantage per rubric, spread over tokens by a softmax over rubrics of the relevance.

    Ã[b,g,t] = Σ_{k valid} softmax_k( w[b,g,:,t] ) · Â_k[b,g],   w = s·r (s² = 1 recovers the relevance)
    Shapes: as intra_sample_token_norm, plus rubric_scores (B, G, K) float in {+1, −1} (0 on padding).
    """
    _check_token_inputs(token_rewards, token_mask, rubric_mask, rubric_scores)
    relevance = token_rewards * rubric_scores[..., None]                          # (B, G, K, T)  w = r·s
    logits = relevance.masked_fill(~rubric_mask[:, None, :, None], float("-inf"))  # (B, G, K, T)
    share = torch.softmax(logits, dim=2)                                          # (B, G, K, T)  over rubrics
    share = share.nan_to_num(0.0)                                 # a prompt with no real rubric: 0, not 0/0 = NaN
    spread = (share * rubric_group_advantages(rubric_scores, eps)[..., None]).sum(dim=2)  # (B, G, T)
    return spread * token_mask.to(token_rewards.dtype)                            # (B, G, T)


def rubric_group_token_norm(token_rewards: torch.Tensor, token_mask: torch.Tensor, rubric_mask: torch.Tensor,
                            rubric_scores: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Ablation (the authors' reward_norm_rubrics_for_p): each rubric's group advantage, on its relevant tokens.

    Ã[b,g,t] = Σ_{k valid} Â_k[b,g] · w[b,g,k,t]     Not zero-sum inside a response, and when the all-or-nothing
    group is tied (every response fails) single rubrics still differ across it, so Ã still carries their signal.
    Shapes: as rubric_softmax_token_norm.
    """
    _check_token_inputs(token_rewards, token_mask, rubric_mask, rubric_scores)
    relevance = token_rewards * rubric_scores[..., None]                          # (B, G, K, T)  w = r·s
    per_rubric = rubric_group_advantages(rubric_scores, eps) * rubric_mask[:, None, :]  # (B, G, K)  Â_k, 0 if padded
    return torch.einsum("bgkt,bgk->bgt", relevance, per_rubric) * token_mask.to(token_rewards.dtype)  # (B, G, T)


TOKEN_NORMS = ("intra", "inter", "rubric_mean", "rubric_softmax", "rubric_group")


def token_advantages(how: str, token_rewards: torch.Tensor, token_mask: torch.Tensor, rubric_mask: torch.Tensor,
                     rubric_scores: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Dispatch to one of TOKEN_NORMS by name: "intra" (the paper), "inter" (the baseline), or an ablation."""
    if how in ("intra", "inter", "rubric_mean"):
        norm = {"intra": intra_sample_token_norm, "inter": inter_sample_token_norm,
                "rubric_mean": rubric_mean_token_norm}
        return norm[how](token_rewards, token_mask, rubric_mask, eps)
    if how in ("rubric_softmax", "rubric_group"):
        norm = rubric_softmax_token_norm if how == "rubric_softmax" else rubric_group_token_norm
        return norm(token_rewards, token_mask, rubric_mask, rubric_scores, eps)
    raise ValueError(f"unknown token normalisation {how!r}; choose one of {TOKEN_NORMS}")


# ============================================================================ the per-batch recipe
# What a trainer does between the judge and the loss, in one place: train.py calls it, and so does any trainer built
# on these files, so copying normalize.py + rtt_grpo.py reproduces train.py's advantages exactly.
class BatchAdvantages(NamedTuple):
    """The advantages of one batch and the relevance they were built from (shapes in rtt_advantages)."""
    response: torch.Tensor              # Â (B, G)
    token: torch.Tensor                 # Ã (B, G, T)
    combined: torch.Tensor              # A (B, G, T)
    relevance: torch.Tensor             # w as used (B, G, K, T): thresholded, 0 at EOS


def rtt_advantages(resp_reward: torch.Tensor, rubric_scores: torch.Tensor, rubric_mask: torch.Tensor,
                   relevance: torch.Tensor, token_mask: torch.Tensor, eos_mask: torch.Tensor, norm: str = "intra",
                   lam: float = 0.5, method: str = "add", relevance_threshold: float = 0.0,
                   eos_token_advantage: bool = True, eps: float = 1e-6, token_norm=None,
                   resp_adv: torch.Tensor | None = None) -> BatchAdvantages:
    """RTT's advantages for a batch, from the verdicts and the relevance weights (METHOD.md §3 steps 4–8).

      1. w = 1{w >= threshold} when relevance_threshold > 0 (a binary mask), else the soft weights (the paper)
      2. w = 0 at the end-of-sequence token (as in the authors' pipeline: METHOD.md §5, deviation 7)
      3. Â = group_advantages(R), or `resp_adv` when the host trainer computes its own (TRL: ε = 1e-4)
      4. r = s·w;  Ã = token normalisation `norm` over the token term: every response token, or every token but
         EOS when eos_token_advantage is False (EOS then gets Â alone: deviation 6)
      5. A = Â + λ·Ã ("add") or (1 − λ)·Â + λ·Ã ("mix"); λ = 0 gives GRPO exactly

    Shapes and conventions:
        resp_reward    (B, G)        float  R from rewards.response_reward (AON or mean)
        rubric_scores  (B, G, K)     float  s: +1 satisfied, −1 violated on valid rubrics, 0 on padded ones. Not 0/1:
                                            the rubric-level variants z-score s across the group and need its sign
        rubric_mask    (B, K)        bool   real rubrics (bool, not 0/1 integers: an int mask is refused)
        relevance      (B, G, K, T)  float  w in [0, 1], 0 on padding; floats (an integer buffer erases soft weights)
        token_mask     (B, G, T)     bool   real response tokens, EOS included
        eos_mask       (B, G, T)     bool   the end-of-sequence token of each response (False where none was emitted)
        token_norm     a function with token_advantages' signature (default: token_advantages), e.g. the authors'
                       pipeline as it runs (released_code.token_advantages)
        resp_adv       (B, G)  float  Â as the host trainer computed it from R (then used as given, so λ = 0
                                      reproduces that trainer exactly); None: group_advantages(resp_reward, eps)
        returns        BatchAdvantages(response Â, token Ã, combined A, relevance w as used); A is 0 on padding
    Scale: under "intra" a violated rubric whose relevance is one token of an n-token response puts −√(n − 1) on that
    token (−4.4 at n = 20, −45 at n = 2,048) and +1/√(n − 1) on the others, while |Â| <= (G − 1)/√G (2.5 at G = 8):
    in long responses the token term can swamp Â unless λ is small. ε does not help with near-constant weights: a
    row of 0.5 with one 0.51 z-scores to the same ±√(n − 1) pattern as a one-hot row (binarise, or check w first).
    """
    if eos_mask.dtype != torch.bool or eos_mask.shape != token_mask.shape:
        raise ValueError(f"eos_mask must be a bool tensor shaped like token_mask {tuple(token_mask.shape)}, "
                         f"got {eos_mask.dtype} {tuple(eos_mask.shape)}")
    if not relevance.is_floating_point() or bool((relevance < 0).any()) or bool((relevance > 1).any()):
        raise ValueError(f"relevance must be float weights in [0, 1], got {relevance.dtype}")
    if relevance_threshold > 0:
        relevance = (relevance >= relevance_threshold).to(relevance.dtype)        # (B, G, K, T)  DEVIATION(6)
    relevance = relevance.masked_fill(eos_mask[:, :, None, :], 0.0)              # (B, G, K, T)  DEVIATION(7)
    if resp_adv is None:
        resp_adv = group_advantages(resp_reward, eps)                             # (B, G)        Â
    elif resp_adv.shape != resp_reward.shape:
        raise ValueError(f"resp_adv must be (B, G) like resp_reward {tuple(resp_reward.shape)}, "
                         f"got {tuple(resp_adv.shape)}")
    tok_reward = rubric_scores[..., None] * relevance                             # (B, G, K, T)  r = s·w
    token_term = token_mask if eos_token_advantage else token_mask & ~eos_mask    # (B, G, T)     DEVIATION(6)
    tok_adv = (token_norm or token_advantages)(norm, tok_reward, token_term, rubric_mask, rubric_scores, eps)
    combined = _combine(resp_adv, tok_adv, lam, method)                           # (B, G, T)     A
    return BatchAdvantages(resp_adv, tok_adv, combined * token_mask.to(combined.dtype), relevance)


def _combine(resp_adv: torch.Tensor, tok_adv: torch.Tensor, lam: float, method: str) -> torch.Tensor:
    """A copy of rtt_grpo.combine_advantages (tests/test_layout.py checks they agree), so this file copies alone."""
    if method == "add" and lam >= 0:
        return resp_adv[..., None] + lam * tok_adv                                # (B, G, T)     Â + λ·Ã
    if method == "mix" and 0 <= lam <= 1:
        return (1 - lam) * resp_adv[..., None] + lam * tok_adv                    # (B, G, T)     (1 − λ)·Â + λ·Ã
    raise ValueError(f"method must be 'add' (λ >= 0) or 'mix' (λ in [0, 1]), got {method!r} with λ = {lam}")


if __name__ == "__main__":
    # METHOD.md §5: two responses violate one rubric on the same 5 tokens; lengths 20 and 200.
    token_mask = (torch.arange(200) < torch.tensor([20, 200])[:, None])[None]    # (B=1, G=2, T=200)
    relevance = torch.zeros(1, 2, 1, 200)                                         # (B, G, K=1, T)
    relevance[..., :5] = 1.0                                                      # the 5 offending tokens
    rubric_scores = -torch.ones(1, 2, 1)                                           # (B, G, K)  both violate
    rubric_mask = torch.ones(1, 1, dtype=torch.bool)                              # (B, K)
    print("lengths 20 and 200, both violate one rubric on their first 5 tokens (r = s·w):")
    for name in TOKEN_NORMS:
        adv = token_advantages(name, rubric_scores[..., None] * relevance, token_mask, rubric_mask, rubric_scores)
        print(f"{name:>15}: summed token advantage per response {[round(v, 2) for v in adv.sum(-1)[0].tolist()]}, "
              f"first tokens of response 0: {[round(v, 2) for v in adv[0, 0, :7].tolist()]}")
    # A tied all-or-nothing group (both fail): GRPO gives 0, but rubric 0 passes in response 0 only.
    scores = torch.tensor([[[1.0, -1.0], [-1.0, -1.0]]])                          # (B=1, G=2, K=2)
    w = torch.ones(1, 2, 2, 4)                                                    # (B, G, K, T) uniform relevance
    print("\ntied group, rubric 0 passes in response 0 only; GRPO on all-or-nothing rewards:",
          group_advantages(torch.zeros(1, 2)).tolist(), "| rubric_group Ã:",
          [round(v, 3) for v in rubric_group_token_norm(scores[..., None] * w, torch.ones(1, 2, 4, dtype=torch.bool),
                                                        torch.ones(1, 2, dtype=torch.bool), scores)[0, :, 0].tolist()])
