"""
engines/trl_rtt.py — RTT inside TRL's GRPOTrainer: the token-level term added to the GRPO trainer most people
already run, on one device or many (accelerate: DDP, DeepSpeed ZeRO, FSDP). Written against trl 1.16.0.

Copy it with normalize.py, rewards.py and discriminator.py: it imports torch, transformers, trl and those three
files, nothing else of this project.

What TRL does, and what this file adds (METHOD.md §3):
    TRL  generates G completions per prompt (the G copies of a prompt are consecutive in the global batch, possibly
         split across processes), calls the reward functions (one float per completion), computes
         Â = (R − mean_g R) / (std_g R + 1e-4) over the global batch, keeps its own process's rows, and minimises the
         clipped loss with advantages (N,) or, from a subclass, (N, T).
    RTT  RubricReward is the reward function: it asks a judge for every rubric's verdict s (+1 / −1) and returns
         R = all-or-nothing or the mean pass rate; it keeps the verdicts of the completions it has just scored.
         RTTGRPOTrainer then computes the relevance w of every (completion, rubric) on the completion ids TRL
         generated (never re-tokenised text), gathers s, w, masks and Â from every process (a group split across
         processes is whole again), calls normalize.rtt_advantages — the same per-batch recipe as train.py:
         threshold, w = 0 at EOS, EOS in or out of the token term, token normalisation, combination — and hands
         TRL's loss this process's rows of A = Â + λ·Ã, shape (N_local, T).
Two ε: Â is TRL's own (ε = 1e-4, std with Bessel's correction, as train.py's), so λ = 0 is TRL's GRPO bit for bit;
Ã uses `eps` (train.py's 1e-6). For the same completions and verdicts A differs from train.py's only through Â's ε.

Dimension legend (as in the concept files): N completions in the global batch = B prompts × G, K rubrics, T tokens.
"""

from dataclasses import dataclass

import torch
from trl import GRPOConfig, GRPOTrainer
from trl.models import prepare_deepspeed

from discriminator import (INFERENCE_BATCH_TOKENS, check_same_tokenizer, random_relevance, relevance,
                           uniform_relevance)
from normalize import TOKEN_NORMS, BatchAdvantages, rtt_advantages
from rewards import response_reward

RELEVANCE_KINDS = ("discriminator", "uniform", "random")


# ============================================================================ the reward function: R from verdicts
class RubricReward:
    """A TRL reward function that judges every rubric of a completion and returns its response reward R.

    Each dataset row carries "item": the index of its prompt in `items` (dicts with "rubrics", as the judges read
    them). TRL calls it with the local completions and the dataset columns; it returns R (one float each) and keeps
    `verdicts` = (s (N_local, K) float ±1 and 0 on padded rubrics, rubric_mask (N_local, K) bool) of that call,
    which RTTGRPOTrainer reads. In a plain GRPOTrainer it is GRPO on the same rewards.

    judge: judge(prompts (B dicts), responses (B lists of G strings)) -> (s (B, G, K), rubric_mask (B, K)), e.g.
           rewards.RuleJudge / LLMJudge / HybridJudge.   how: "aon" (all-or-nothing, the paper) | "mean" (CSR).
    """

    def __init__(self, judge, items: list[dict], how: str = "aon"):
        if how not in ("aon", "mean"):
            raise ValueError(f"how must be 'aon' or 'mean', got {how!r}")
        self.judge = judge
        self.items = items
        self.how = how
        self.__name__ = f"rubric_{how}"                    # TRL logs each reward function under its __name__
        self.verdicts: tuple[torch.Tensor, torch.Tensor] | None = None

    def __call__(self, prompts: list, completions: list, item: list[int] | None = None, **unused) -> list[float]:
        if item is None:
            raise ValueError("RubricReward needs an 'item' column in the dataset: each row's index into `items`")
        texts = [[c if isinstance(c, str) else c[-1]["content"]] for c in completions]   # N lists of G = 1 string
        scores, rubric_mask = self.judge([self.items[i] for i in item], texts)          # (N, 1, K), (N, K)
        self.verdicts = (scores[:, 0].float(), rubric_mask)
        return response_reward(scores.float(), rubric_mask, self.how)[:, 0].tolist()   # (N,)  R


# ============================================================================ the trainer
@dataclass
class RTTConfig:
    """RTT's settings (METHOD.md §3, §5); the GRPO ones stay in GRPOConfig."""
    lam: float = 0.5                      # λ: weight of the token advantage; 0 gives TRL's GRPO exactly
    method: str = "add"                   # add: Â + λÃ | mix: (1 − λ)Â + λÃ
    norm: str = "intra"                   # token normalisation: one of normalize.TOKEN_NORMS
    relevance: str = "discriminator"      # w: discriminator | uniform | random
    relevance_threshold: float = 0.0      # 0: soft weights (the paper); > 0: w = 1{w >= threshold}
    eos_token_advantage: bool = True      # EOS in the token term (the paper) or Â only
    eps: float = 1e-6                     # ε of the token normalisation
    relevance_seed: int = 0               # draws of relevance = "random"
    relevance_batch_tokens: int = INFERENCE_BATCH_TOKENS   # discriminator positions per forward

    def __post_init__(self):
        problems = [(self.norm not in TOKEN_NORMS, f"norm must be one of {TOKEN_NORMS}, got {self.norm!r}"),
                    (self.relevance not in RELEVANCE_KINDS,
                     f"relevance must be one of {RELEVANCE_KINDS}, got {self.relevance!r}"),
                    (self.method not in ("add", "mix"), f"method must be 'add' or 'mix', got {self.method!r}"),
                    (self.lam < 0 or (self.method == "mix" and self.lam > 1), f"λ = {self.lam} is out of range"),
                    (self.relevance_batch_tokens < 1, "relevance_batch_tokens must be >= 1")]
        for refused, message in problems:
            if refused:
                raise ValueError(message)


# TRL features that test the SIGN of a sequence's advantage: with per-token advantages the test would run per token,
# which changes what they mean (a sequence is no longer kept or weighted whole).
SEQUENCE_SIGN_FEATURES = {"off_policy_mask_threshold": "off-policy sequence masking keeps a sequence if A >= 0",
                          "vespo": "VESPO picks its gamma weight per sequence by the sign of A"}


class RTTGRPOTrainer(GRPOTrainer):
    """GRPOTrainer whose advantages are RTT's A = Â + λ·Ã (N_local, T).

    model, args (GRPOConfig), train_dataset (rows with "prompt" and "item"), processing_class: as for GRPOTrainer.
    rubric_reward: the RubricReward of the data (the only reward function: R must be the verdicts' R).
    rtt: RTTConfig.  discriminator: (model, tokenizer) when rtt.relevance == "discriminator"; its tokenizer must be
    the policy's (it reads the completion ids). It is placed on the device as TRL places reward models.
    """

    def __init__(self, model, args: GRPOConfig, rubric_reward: RubricReward, rtt: RTTConfig,
                 discriminator: tuple | None = None, **kwargs):
        if "reward_funcs" in kwargs:
            raise ValueError("RTTGRPOTrainer takes rubric_reward, not reward_funcs: R and the token term must come "
                             "from the same verdicts")
        if (rtt.relevance == "discriminator") != (discriminator is not None):
            raise ValueError("give a discriminator exactly when rtt.relevance == 'discriminator' "
                             f"(relevance {rtt.relevance!r}, discriminator {'given' if discriminator else 'None'})")
        refusals = [(args.off_policy_mask_threshold is not None, "off_policy_mask_threshold"),
                    (args.loss_type == "vespo", "vespo")]
        for refused, feature in refusals:
            if refused:
                raise ValueError(f"{feature} is refused with RTT: {SEQUENCE_SIGN_FEATURES[feature]}, and RTT's A "
                                 "is per token")
        if args.multi_objective_aggregation != "sum_then_normalize":
            raise ValueError("multi_objective_aggregation must be 'sum_then_normalize': with one reward function "
                             "'normalize_then_sum' z-scores R over the whole batch, not per group")
        if kwargs.get("tools") or kwargs.get("environment_factory"):
            raise ValueError("tool calls are refused with RTT: tool outputs are tokens the policy did not generate, "
                             "and the discriminator would score them")
        super().__init__(model=model, reward_funcs=[rubric_reward], args=args, **kwargs)
        self.rubric_reward = rubric_reward
        self.rtt = rtt
        self.relevance_generator = torch.Generator().manual_seed(rtt.relevance_seed)
        self.discriminator = None
        if discriminator is not None:
            disc_model, disc_tokenizer = discriminator
            check_same_tokenizer(disc_tokenizer, self.processing_class)
            if self.is_deepspeed_enabled:                                          # as TRL places reward models
                disc_model = prepare_deepspeed(disc_model, self.accelerator)
            else:
                disc_model = self.accelerator.prepare_model(disc_model, evaluation_mode=True, device_placement=True)
            self.discriminator = (disc_model.eval(), disc_tokenizer)

    def _generate_and_score_completions(self, inputs: list[dict]) -> dict:
        output = super()._generate_and_score_completions(inputs)                  # TRL: completions, R, Â (N_local,)
        if self.rtt.lam == 0:
            return output                                                          # GRPO: Â as TRL computed it
        mode = "train" if self.model.training else "eval"
        group_size = self.num_generations if mode == "train" else self.num_generations_eval
        completion_ids = output["completion_ids"]                                  # (N_local, T_local)
        completion_mask = output["completion_mask"].bool()                         # (N_local, T_local)
        items = [self.rubric_reward.items[row["item"]] for row in inputs]
        verdicts, rubric_mask = self.rubric_reward.verdicts                        # (N_local, K_local) x2
        weights = self.token_relevance(items, completion_ids, completion_mask)     # (N_local, K_local, T_local)
        local, _, metrics = rtt_batch_advantages(self.accelerator, group_size, output["advantages"], verdicts,
                                                 rubric_mask, weights, completion_ids, completion_mask,
                                                 self.eos_token_ids, self.rtt, self.rubric_reward.how)
        output["advantages"] = local                                               # (N_local, T_local)  A
        for name, value in metrics.items():
            self._metrics[mode][name].append(value)
        return output

    def token_relevance(self, items: list[dict], completion_ids: torch.Tensor,
                        completion_mask: torch.Tensor) -> torch.Tensor:
        """w (N, K, T) of this process's completions: each completion is a group of one for the relevance providers,
        which take (B, G, T)."""
        ids = completion_ids[:, None]                                              # (N, 1, T)
        mask = completion_mask[:, None]                                            # (N, 1, T)
        if self.rtt.relevance == "uniform":
            return uniform_relevance(items, ids, mask)[:, 0]
        if self.rtt.relevance == "random":
            return random_relevance(items, ids, mask, generator=self.relevance_generator)[:, 0]
        model, tokenizer = self.discriminator
        return relevance(model, tokenizer, items, ids, mask, self.rtt.relevance_batch_tokens)[:, 0]


# ============================================================================ the global batch's advantages
def gather_rows(accelerator, tensor: torch.Tensor, pad_dims: tuple[int, ...] = ()) -> torch.Tensor:
    """Every process's rows, in process order: `pad_dims` padded with 0 to the largest size on any process first."""
    for dim in pad_dims:
        tensor = accelerator.pad_across_processes(tensor, dim=dim, pad_index=0)
    return accelerator.gather(tensor)


def rtt_batch_advantages(accelerator, group_size: int, resp_adv: torch.Tensor, verdicts: torch.Tensor,
                         rubric_mask: torch.Tensor, weights: torch.Tensor, completion_ids: torch.Tensor,
                         completion_mask: torch.Tensor, eos_token_ids: list[int], rtt: RTTConfig,
                         reward: str = "aon") -> tuple[torch.Tensor, BatchAdvantages, dict]:
    """(this process's A (N_local, T_local), the global batch's BatchAdvantages, metrics): the group-level
    normalisations need a group's G completions together, and a group may be split across processes, so everything
    is gathered first.

    Shapes (local): resp_adv Â (N_local,) as TRL computed it; verdicts s (N_local, K_local); rubric_mask
    (N_local, K_local) bool; weights w (N_local, K_local, T_local); completion_ids, completion_mask (N_local, T_local).
    Every process holds the same number of rows (TRL's sampler), and the G rows of a prompt are consecutive.
    """
    n_local, t_local = completion_ids.shape
    scores = gather_rows(accelerator, verdicts.float(), (1,))                      # (N, K)
    valid = gather_rows(accelerator, rubric_mask.long(), (1,)).bool()              # (N, K)   gloo gathers no bool
    relevance_weights = gather_rows(accelerator, weights.float(), (1, 2))          # (N, K, T)
    ids = gather_rows(accelerator, completion_ids, (1,))                           # (N, T)
    token_mask = gather_rows(accelerator, completion_mask.long(), (1,)).bool()     # (N, T)
    response_adv = gather_rows(accelerator, resp_adv.float())                      # (N,)
    n_rows, width = token_mask.shape
    if n_rows % group_size:
        raise ValueError(f"{n_rows} completions do not split into groups of {group_size}")
    b_size = n_rows // group_size
    k_size = scores.shape[1]
    valid = valid.view(b_size, group_size, k_size)                                 # (B, G, K)
    if not bool((valid == valid[:, :1]).all()):
        raise ValueError("the rubrics differ inside a group: completions are not in groups of G consecutive rows")
    is_eos = token_mask & torch.isin(ids, torch.tensor(eos_token_ids, device=ids.device))   # (N, T)
    scores = scores.view(b_size, group_size, k_size)                               # (B, G, K)   s
    batch = rtt_advantages(response_reward(scores, valid[:, 0], reward), scores, valid[:, 0],
                           relevance_weights.view(b_size, group_size, k_size, width),
                           token_mask.view(b_size, group_size, width), is_eos.view(b_size, group_size, width),
                           rtt.norm, rtt.lam, rtt.method, rtt.relevance_threshold, rtt.eos_token_advantage, rtt.eps,
                           resp_adv=response_adv.view(b_size, group_size))
    first = accelerator.process_index * n_local
    local = batch.combined.reshape(n_rows, width)[first:first + n_local, :t_local]   # (N_local, T_local)  A
    pairs = valid[:, :, :, None] & token_mask.view(b_size, group_size, 1, width)  # (B, G, K, T) rubric x token
    metrics = {"rtt/relevance_mean": batch.relevance[pairs].mean().item() if pairs.any() else 0.0,
               "rtt/token_advantage_abs_mean": batch.token[token_mask.view_as(batch.token)].abs().mean().item()
               if token_mask.any() else 0.0}
    return local.to(resp_adv.dtype), batch, metrics
