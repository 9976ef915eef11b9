"""
rtt_grpo.py — the RTT-GRPO objective: combined advantage and the clipped policy loss.

Paper:    paper §3 (combined advantage), PPO/GRPO clipped surrogate; METHOD.md §3 steps 8–9.
Input:    response advantage Â (B, G), token advantage Ã (B, G, T), per-token log-probs (N, T)
Output:   combined advantage A (B, G, T); scalar loss and a dict of diagnostics

Combined: "add"  A = Â + λ·Ã         (the paper's runs: λ = 0.5)
          "mix"  A = (1 − λ)·Â + λ·Ã
          λ = 0 gives plain GRPO, bit for bit.
Loss:     PPO-clip per token with an asymmetric range [1 − ε_low, 1 + ε_high] ("clip-higher",
          0.2 / 0.27 in the paper), optional k3 KL penalty to a reference policy (off in the paper),
          averaged per sequence and then over sequences ("seq-mean-token-mean", the paper's setting)
          or over all tokens at once ("token-mean", DAPO).

Deviations from the paper: none in this file.

Demo:     python rtt_grpo.py
"""

import torch

# Dimension legend (identical in every file):
#   B prompts in the batch        G responses per prompt (group)     N = B*G responses, flattened
#   K rubrics per prompt          T response tokens, right-padded    V vocabulary size

LOSS_AGGREGATIONS = ("seq-mean-token-mean", "token-mean")


def combine_advantages(resp_adv: torch.Tensor, tok_adv: torch.Tensor, lam: float, method: str = "add") -> torch.Tensor:
    """Combined advantage of RTT: the response-level GRPO advantage plus λ times the token-level one.

    add:  A[b,g,t] = Â[b,g] + λ·Ã[b,g,t]
    mix:  A[b,g,t] = (1 − λ)·Â[b,g] + λ·Ã[b,g,t]       (λ in [0, 1])

    Shapes:
        resp_adv  (B, G)     float  Â
        tok_adv   (B, G, T)  float  Ã (0 on padding)
        returns   (B, G, T)  float  A; padding is left to the loss's token mask

    Example:
        >>> combine_advantages(torch.tensor([[1.0, -1.0]]), torch.tensor([[[0.5, -0.5], [2.0, 0.0]]]), lam=0.5)
        tensor([[[ 1.2500,  0.7500],
                 [ 0.0000, -1.0000]]])
    """
    if resp_adv.dim() != 2 or tok_adv.dim() != 3 or tok_adv.shape[:2] != resp_adv.shape:
        raise ValueError(f"expected resp_adv (B, G) and tok_adv (B, G, T) with matching B, G; "
                         f"got {tuple(resp_adv.shape)} and {tuple(tok_adv.shape)}")
    if lam < 0:
        raise ValueError(f"lam (λ) must be >= 0, got {lam}")
    if method == "add":
        return resp_adv[..., None] + lam * tok_adv                                # (B, G, T)
    if method == "mix":
        if lam > 1:
            raise ValueError(f"method 'mix' needs lam (λ) in [0, 1], got {lam}")
        return (1 - lam) * resp_adv[..., None] + lam * tok_adv                    # (B, G, T)
    raise ValueError(f"unknown combination method {method!r}; choose 'add' or 'mix'")


def masked_mean(x: torch.Tensor, mask: torch.Tensor, agg: str) -> torch.Tensor:
    """Average a per-token quantity over real tokens.

    Shapes:  x (N, T) float,  mask (N, T) bool  ->  () scalar
    agg:
      "seq-mean-token-mean"  mean over each sequence's tokens, then over sequences with >= 1 token
                             (original GRPO and the paper; a short answer weighs more per token)
      "token-mean"           sum over all tokens / number of tokens (DAPO; every token weighs the same)
    """
    weight = mask.to(x.dtype)                                                     # (N, T)
    if agg == "seq-mean-token-mean":
        n_tokens = weight.sum(dim=-1)                                             # (N,)
        seq_mean = (x * weight).sum(dim=-1) / n_tokens.clamp(min=1)               # (N,)
        non_empty = (n_tokens > 0).to(x.dtype)                                    # (N,)
        return (seq_mean * non_empty).sum() / non_empty.sum().clamp(min=1)        # ()
    if agg == "token-mean":
        return (x * weight).sum() / weight.sum().clamp(min=1)                     # ()
    raise ValueError(f"unknown loss aggregation {agg!r}; choose one of {LOSS_AGGREGATIONS}")


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, token_mask: torch.Tensor,
                clip_low: float = 0.2, clip_high: float = 0.27, agg: str = "seq-mean-token-mean",
                ref_logp: torch.Tensor | None = None, kl_coef: float = 0.0) -> tuple[torch.Tensor, dict]:
    """Clipped surrogate loss of GRPO with RTT's per-token advantages.

    PPO / GRPO (DeepSeekMath, Shao et al. 2024), per token, maximised:
      J_t = min( ρ_t·A_t , clip(ρ_t, 1 − ε_low, 1 + ε_high)·A_t ) − β·KL_t
      ρ_t = π_θ(o_t | q, o_<t) / π_θold(o_t | q, o_<t) = exp(logp − old_logp)
      KL_t = exp(ref − logp) − (ref − logp) − 1     (k3 estimator of KL(π_θ ‖ π_ref), >= 0)
    symbols → code: ρ_t = ratio, A_t = advantages, ε_low/ε_high = clip_low/clip_high, β = kl_coef

    Shapes:
        logp, old_logp, ref_logp  (N, T)  float32  log-probs of the sampled tokens; only logp carries grad
        advantages                (N, T)  float    A from combine_advantages, flattened to N = B·G
        token_mask                (N, T)  bool     real response tokens
        returns  loss ()  and metrics {clip_frac, ratio_mean, ratio_min, ratio_max, approx_kl_old, kl_ref}

    Note: with one optimisation epoch per batch, old_logp == logp.detach(), ρ = 1 and the clip never
    fires, so the loss value is ~0 by construction (advantages have zero mean); the gradient is not.
    """
    shapes = {tuple(t.shape) for t in (logp, old_logp, advantages, token_mask)}
    if len(shapes) != 1 or logp.dim() != 2:
        raise ValueError("logp, old_logp, advantages and token_mask must all be (N, T); got "
                         f"{[tuple(t.shape) for t in (logp, old_logp, advantages, token_mask)]}")
    if token_mask.dtype != torch.bool:
        raise ValueError(f"token_mask must be bool, got {token_mask.dtype}")
    if clip_low < 0 or clip_high < 0 or clip_low >= 1:
        raise ValueError(f"need 0 <= clip_low < 1 and clip_high >= 0, got {clip_low}, {clip_high}")
    if kl_coef < 0 or (kl_coef > 0 and ref_logp is None):
        raise ValueError("kl_coef must be >= 0, and a positive kl_coef needs ref_logp")

    log_ratio = logp - old_logp                                                   # (N, T)
    ratio = torch.exp(log_ratio)                                                  # (N, T)  ρ
    unclipped = ratio * advantages                                                # (N, T)
    clipped = ratio.clamp(1 - clip_low, 1 + clip_high) * advantages               # (N, T)
    surrogate = torch.minimum(unclipped, clipped)                                 # (N, T)  J_t before KL
    kl_ref = torch.zeros_like(logp)                                               # (N, T)
    if ref_logp is not None:
        ref_minus = ref_logp - logp                                               # (N, T)
        kl_ref = torch.exp(ref_minus) - ref_minus - 1                             # (N, T)  k3, >= 0
    objective = masked_mean(surrogate - kl_coef * kl_ref, token_mask, agg)       # ()
    loss = -objective                                   # the only minus sign: J is maximised, the optimiser minimises

    with torch.no_grad():
        valid = token_mask
        n_valid = valid.sum().clamp(min=1)
        metrics = {
            "clip_frac": float(((clipped < unclipped) & valid).sum() / n_valid),
            "ratio_mean": float(ratio[valid].mean()) if valid.any() else 1.0,
            "ratio_min": float(ratio[valid].min()) if valid.any() else 1.0,
            "ratio_max": float(ratio[valid].max()) if valid.any() else 1.0,
            "approx_kl_old": float(masked_mean(ratio - 1 - log_ratio, valid, "token-mean")),  # k3 of KL(old ‖ new)
            "kl_ref": float(masked_mean(kl_ref, valid, "token-mean")),
        }
    return loss, metrics


if __name__ == "__main__":
    resp_adv = torch.tensor([[0.87, -0.87]])                                      # (B=1, G=2)  Â
    tok_adv = torch.tensor([[[0.5, 0.5, -1.0, 0.0], [0.6, -1.7, 0.6, 0.6]]])      # (B, G, T=4) Ã
    token_mask = torch.tensor([[True, True, True, False], [True, True, True, True]])  # (N, T)
    for lam in (0.0, 0.5):
        print(f"combined advantage, add, λ={lam} (B, G, T):\n", combine_advantages(resp_adv, tok_adv, lam, "add"))
    advantages = combine_advantages(resp_adv, tok_adv, 0.5).flatten(0, 1)        # (N, T)
    logp = torch.log(torch.tensor([[0.5, 0.4, 0.3, 1.0], [0.2, 0.6, 0.7, 0.9]])).requires_grad_()  # (N, T)
    old_logp = logp.detach() + torch.tensor([[0.3, 0.0, -0.3, 0.0], [0.0, 0.0, 0.0, 0.0]])        # (N, T)
    loss, metrics = policy_loss(logp, old_logp, advantages, token_mask)
    loss.backward()
    print("loss:", loss.item(), "| metrics:", {k: round(v, 4) for k, v in metrics.items()})
    print("d loss / d logp (0 on the padded token [0, 3], and on [0, 2], whose ratio is clipped):\n", logp.grad)
