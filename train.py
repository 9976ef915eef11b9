"""
train.py — the RTT-GRPO training loop: one readable loop that wires the concept files together.

Paper:    RTT §3 (the training step); RTT_SPEC.md §3 steps 1–9, settings of §7.
Run:      python train.py                       # toy preset: Rubric World, tiny policy, CPU, minutes
          python train.py --lam 0               # the same run as plain GRPO (the baseline)
          python train.py --relevance oracle    # ground-truth relevance instead of the discriminator
          python train.py --resume out/toy/ckpt.pt --max_steps 300
          python train.py smollm2               # SmolLM2-135M-Instruct on IFEval prompts (offline, slow on CPU)
          python train.py paper --policy Qwen/Qwen3-4B-Instruct-2507 --data rubrics.jsonl \
                 --judge hybrid --judge_model <judge> --discriminator <dir>   # the authors' settings, one GPU
Outputs:  out_dir/metrics.jsonl (one line per step), samples.txt, evals.jsonl, ckpt.pt, summary.json

Data flow of one step (letters as in the dimension legend):

  prompts (B) ── policy samples G each ──► responses (B, G, T)
                       │                                  │
          rewards.py   │ judge every rubric               │ discriminator.py: which tokens matter for which rubric
                       ▼                                  ▼
          rubric scores s (B, G, K)              relevance w (B, G, K, T)
                       └───────────────┬──────────────────┘
                    normalize.py       ▼  response adv Â (B, G)  +  token adv Ã (B, G, T)
                    rtt_grpo.py        ▼  combined A = Â + λ·Ã (B, G, T) ──► clipped surrogate ──► loss ()

Presets.  toy (default) | smollm2 | paper; a preset sets defaults, flags override them (real_models.PRESET_SETTINGS).
          Data other than Rubric World (--data ifeval, a JSONL, a datasets name) is split once by a fixed seed
          into train / val / test (80 / 10 / 10 %, at most 64 prompts each for val and test).
Memory.   --max_batch_tokens > 0 generates in chunks and computes log-probs and gradients in row micro-batches
          of at most that many sequence positions (gradient accumulation, the same gradient as one batch).

Deviations from the paper (tagged `# DEVIATION(n)`):
  1. The toy preset replaces the 4B–7B instruct policy, DeepSeek judge and LLM-trained discriminator with
     a 2-layer policy, a rule judge and a 2-layer discriminator, all built locally (see README).
  2. The toy preset binarises the relevance weights at 0.5 and gives the end-of-sequence token the
     response-level advantage only; flags restore the paper's soft weights and token-level EOS (README).

Logged metrics: loss/policy stays near 0 by construction (advantages have zero mean within each group)
and says nothing about progress; judge by reward/mean and rubric/pass_rate. reward/frac_zero_std near 1
means almost every group is tied (all pass or all fail): no learning signal from the response reward.
"""

import json
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache

import torch
from tqdm import tqdm
from transformers import HfArgumentParser

import data
import discriminator
import eval as evaluation
import policy as policy_lib
import real_models
from normalize import TOKEN_NORMS, group_advantages, token_advantages
from rewards import HybridJudge, LLMJudge, RuleJudge, response_reward, token_rewards
from rtt_grpo import LOSS_AGGREGATIONS, combine_advantages, policy_loss

# toy: the discriminator's soft weights are binarised at 0.5. With soft weights (the paper's text) the intra-sample
# z-score turns the small, nearly constant weights a tiny discriminator gives irrelevant tokens into O(1) token
# advantages of pure noise, and the toy policy collapsed within 120 steps (README, Results: rtt-soft).
# toy: the end-of-sequence token gets the response-level advantage only (rtt_advantages; README, Results: rtt-eos).
PRESETS = {"toy": {"relevance_threshold": 0.5, "eos_token_advantage": False},            # DEVIATION(2)
           **real_models.PRESET_SETTINGS}
RELEVANCE_KINDS = ("discriminator", "oracle", "uniform", "random")
JUDGES = ("rule", "ifeval", "llm", "hybrid")
# fields that define a run: a checkpoint made with other values cannot be resumed under this config
RUN_DEFINING = ("preset", "policy", "data", "judge", "lam", "method", "reward", "norm", "relevance",
                "relevance_threshold", "eos_token_advantage", "group_size",
                "prompts_per_step", "lr", "clip_low", "clip_high", "kl_coef", "loss_agg", "seed")


@dataclass
class Config:
    preset: str = field(default="toy", metadata={"help": f"named settings: {' | '.join(PRESETS)} (also positional)"})
    policy: str = field(default="toy", metadata={"help": "toy (built locally) | smollm2 | a save_pretrained dir or hub id"})
    data: str = field(default="rubric_world", metadata={
        "help": "rubric_world | ifeval | a JSONL / saved datasets dir / datasets name of prompts with rubrics"})
    judge: str = field(default="rule", metadata={"help": f"{' | '.join(JUDGES)} (rule = Rubric World's checkers)"})
    judge_model: str = field(default="", metadata={"help": "causal LM of the llm / hybrid judge (dir or hub id)"})
    discriminator: str = field(default="", metadata={
        "help": "trained discriminator dir for a real policy (the toy one is built automatically)"})
    dtype: str = field(default="auto", metadata={"help": "auto (bf16 on CUDA, else fp32) | float32 | bfloat16"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "recompute activations in backward"})
    max_batch_tokens: int = field(default=0, metadata={
        "help": "generate, back-propagate and run the discriminator in pieces of at most this many positions "
                "(0 = one batch; the discriminator then uses discriminator.INFERENCE_BATCH_TOKENS)"})
    # RTT ------------------------------------------------------------------------------------------
    lam: float = field(default=0.5, metadata={"help": "λ: weight of the token advantage; 0 gives GRPO exactly"})
    method: str = field(default="add", metadata={"help": "add: Â + λÃ | mix: (1−λ)Â + λÃ"})
    reward: str = field(default="aon", metadata={"help": "response reward: aon (all-or-nothing) | mean (CSR)"})
    norm: str = field(default="intra", metadata={"help": f"token normalisation: {' | '.join(TOKEN_NORMS)}"})
    relevance: str = field(default="discriminator", metadata={"help": f"w: {' | '.join(RELEVANCE_KINDS)}"})
    relevance_threshold: float = field(default=0.0, metadata={
        "help": "0: soft weights w (the paper); > 0: w = 1 where w >= threshold, else 0 (a binary mask)"})
    eos_token_advantage: bool = field(default=True, metadata={
        "help": "True: the end-of-sequence token takes part in the token-level term like any token (the paper); "
                "False: it gets the response-level advantage only"})
    eps: float = field(default=1e-6, metadata={"help": "ε added to every std"})
    # GRPO -----------------------------------------------------------------------------------------
    group_size: int = field(default=8, metadata={"help": "G: responses per prompt [TRL: num_generations]"})
    prompts_per_step: int = field(default=16, metadata={"help": "B: prompts per step [ROLL: rollout_batch_size]"})
    max_steps: int = field(default=200, metadata={"help": "RL steps [TRL: max_steps]"})
    lr: float = field(default=2e-4, metadata={"help": "AdamW learning rate"})
    warmup_steps: int = field(default=10, metadata={"help": "linear learning-rate warm-up steps"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping by global norm"})
    clip_low: float = field(default=0.2, metadata={"help": "ε_low: ratio clip below 1 [TRL: epsilon]"})
    clip_high: float = field(default=0.27, metadata={"help": "ε_high: ratio clip above 1 [TRL: epsilon_high]"})
    kl_coef: float = field(default=0.0, metadata={"help": "β: k3 KL penalty to the start policy [TRL: beta]"})
    loss_agg: str = field(default="seq-mean-token-mean", metadata={"help": " | ".join(LOSS_AGGREGATIONS)})
    ppo_epochs: int = field(default=1, metadata={"help": "μ: optimisation passes over each batch [TRL: num_iterations]"})
    # sampling -------------------------------------------------------------------------------------
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature (paper: 0.99)"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling (paper: 0.99)"})
    top_k: int = field(default=0, metadata={"help": "top-k sampling, 0 = off (paper: 100)"})
    max_new_tokens: int = field(default=policy_lib.MAX_NEW_TOKENS, metadata={"help": "response length cap"})
    # bookkeeping ----------------------------------------------------------------------------------
    seed: int = field(default=0, metadata={"help": "seeds data order, sampling and initialisation"})
    device: str = field(default="auto", metadata={"help": "auto (cuda > mps > cpu) | cpu | cuda | mps"})
    out_dir: str = field(default="out/toy", metadata={"help": "where metrics, samples and checkpoints go"})
    eval_every: int = field(default=50, metadata={"help": "steps between validation evals (0 = off)"})
    eval_samples: int = field(default=4, metadata={"help": "sampled responses per prompt in evaluation"})
    eval_prompts: int = field(default=0, metadata={"help": "evaluate on the first n prompts of a split (0 = all)"})
    sample_every: int = field(default=25, metadata={"help": "steps between sample dumps to samples.txt"})
    ckpt_every: int = field(default=50, metadata={"help": "steps between checkpoints"})
    resume: str = field(default="", metadata={"help": "path of a ckpt.pt to continue from"})
    overwrite: bool = field(default=False, metadata={"help": "allow an out_dir that holds another run"})
    final_eval: bool = field(default=True, metadata={"help": "evaluate start and final policy on the test split"})
    wandb_project: str = field(default="", metadata={"help": "log to this wandb project (off when empty)"})


def parse_config(argv: list[str]) -> Config:
    """`python train.py [preset] [--flag value ...]`: the preset sets defaults, flags override them."""
    preset = argv[0] if argv and not argv[0].startswith("-") else None
    flags = argv[1:] if preset else argv
    parser = HfArgumentParser(Config)
    preset = preset or Config.preset
    if preset not in PRESETS:
        raise SystemExit(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    parser.set_defaults(preset=preset, **PRESETS[preset])
    (cfg,) = parser.parse_args_into_dataclasses(args=flags)
    choices = {"method": ("add", "mix"), "reward": ("aon", "mean"), "norm": TOKEN_NORMS,
               "relevance": RELEVANCE_KINDS, "loss_agg": LOSS_AGGREGATIONS, "judge": JUDGES}
    for name, allowed in choices.items():
        if getattr(cfg, name) not in allowed:
            raise SystemExit(f"--{name} {getattr(cfg, name)!r} is not one of {', '.join(allowed)}")
    if cfg.lam < 0 or cfg.group_size < 2 or cfg.prompts_per_step < 1 or cfg.max_steps < 1:
        raise SystemExit("need --lam >= 0, --group_size >= 2, --prompts_per_step >= 1, --max_steps >= 1")
    if not cfg.data:
        raise SystemExit(f"preset {cfg.preset!r} needs --data: a JSONL of prompts with rubrics, a saved datasets "
                         "directory or a datasets name (or ifeval)")
    if cfg.policy == "toy" and cfg.data != "rubric_world":
        raise SystemExit(f"the toy policy only knows Rubric World's words; for --data {cfg.data} use --policy smollm2 "
                         "or a model path")
    if cfg.relevance == "oracle" and cfg.data != "rubric_world":
        raise SystemExit("--relevance oracle needs Rubric World (its minimal-edit labels); choose discriminator, "
                         "uniform or random")
    if cfg.judge in ("llm", "hybrid") and not cfg.judge_model:
        raise SystemExit(f"--judge {cfg.judge} needs --judge_model (a causal LM directory or hub id)")
    if cfg.relevance == "discriminator" and cfg.policy != "toy" and not cfg.discriminator:
        raise SystemExit("--relevance discriminator with a real policy needs --discriminator DIR (a token classifier "
                         "saved with discriminator.save_discriminator, sharing the policy's tokenizer); or choose "
                         "--relevance uniform | random")
    return cfg


def pick_device(name: str) -> torch.device:
    """'auto' = cuda > mps > cpu. Every code path also works on cpu."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


class Logger:
    """Metrics to out_dir/metrics.jsonl (one line per step); wandb only if asked for."""

    def __init__(self, out_dir: str, wandb_project: str, config: dict):
        self.path = os.path.join(out_dir, "metrics.jsonl")
        self.run = None
        if wandb_project:                                  # off by default, imported only when used
            import wandb
            self.run = wandb.init(project=wandb_project, config=config)

    def log(self, step: int, metrics: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.run is not None:
            self.run.log(metrics, step=step)


def save_checkpoint(path: str, model, optimizer, scheduler, step: int, cfg: Config) -> None:
    """Everything needed to resume, in one file, written atomically."""
    state = {"policy": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "step": step, "config": asdict(cfg),
             "rng": {"python": random.getstate(), "torch": torch.get_rng_state()}}
    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)


def load_checkpoint(path: str, cfg: Config) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise SystemExit(f"cannot read checkpoint {path!r}: {type(error).__name__}: {error}") from error
    if not isinstance(state, dict) or not {"policy", "optimizer", "step", "config"} <= set(state):
        raise SystemExit(f"{path!r} is not a train.py checkpoint (missing policy/optimizer/step/config)")
    differing = {k: (state["config"].get(k), getattr(cfg, k)) for k in RUN_DEFINING
                 if state["config"].get(k) != getattr(cfg, k)}
    if differing:
        raise SystemExit(f"checkpoint {path!r} was made with another config (checkpoint vs now): {differing}")
    return state


def prepare_out_dir(cfg: Config) -> None:
    os.makedirs(cfg.out_dir, exist_ok=True)
    holds_run = any(os.path.exists(os.path.join(cfg.out_dir, f)) for f in ("metrics.jsonl", "ckpt.pt"))
    if holds_run and not cfg.resume and not cfg.overwrite:
        raise SystemExit(f"{cfg.out_dir!r} holds another run; pass --resume {cfg.out_dir}/ckpt.pt, --overwrite, "
                         "or another --out_dir")
    if not cfg.resume:
        for name in ("metrics.jsonl", "evals.jsonl", "samples.txt", "ckpt.pt", "summary.json", "start_eval.json"):
            if os.path.exists(os.path.join(cfg.out_dir, name)):
                os.remove(os.path.join(cfg.out_dir, name))


def drop_lines_after(path: str, last_step: int) -> None:
    """Keep the JSONL lines with "step" <= last_step (atomically), so a resumed run never logs a step twice."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        kept = [line for line in f if line.strip() and json.loads(line)["step"] <= last_step]
    with open(path + ".tmp", "w") as f:
        f.writelines(kept)
    os.replace(path + ".tmp", path)


def rtt_advantages(cfg: Config, rubric_scores: torch.Tensor, rubric_mask: torch.Tensor, relevance: torch.Tensor,
                   token_term_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """RTT_SPEC §3 steps 3 and 5–8: response reward R, GRPO advantage Â, token rewards r = s·w, token advantage Ã,
    combined A. `token_term_mask` holds the tokens that take part in the token-level term: the response tokens,
    without the end-of-sequence token when cfg.eos_token_advantage is False. Why leave it out: under the
    intra-sample z-score a token no rubric points at gets −μ/σ from every satisfied rubric, and for the
    end-of-sequence token that is a steady push against stopping (Rubric World, oracle relevance, 100 steps:
    18.3 tokens per response with it, 12.1 without; README, Results). A left-out token gets Ã = 0, so A = Â.

    Shapes:  rubric_scores (B, G, K) ±1;  rubric_mask (B, K);  relevance (B, G, K, T);  token_term_mask (B, G, T)
             -> R (B, G), Â (B, G), Ã (B, G, T), A (B, G, T)
    """
    resp_reward = response_reward(rubric_scores, rubric_mask, cfg.reward)      # (B, G)        R
    resp_adv = group_advantages(resp_reward, cfg.eps)                           # (B, G)        Â
    tok_reward = token_rewards(rubric_scores, relevance)                        # (B, G, K, T)  r = s·w
    tok_adv = token_advantages(cfg.norm, tok_reward, token_term_mask, rubric_mask, rubric_scores, cfg.eps)  # Ã
    return resp_reward, resp_adv, tok_adv, combine_advantages(resp_adv, tok_adv, cfg.lam, cfg.method)  # A (B, G, T)


def loss_weights(pieces: list[slice], token_mask: torch.Tensor, loss_agg: str) -> list[float]:
    """Weight of each row piece's loss so that the weighted sum is the full-batch loss: its share of the
    sequences (seq-mean-token-mean) or of the valid tokens (token-mean). token_mask (N, T) bool."""
    if loss_agg == "token-mean":
        counts = [float(token_mask[rows].sum()) for rows in pieces]
    else:
        counts = [float(rows.stop - rows.start) for rows in pieces]
    return [count / max(sum(counts), 1.0) for count in counts]


@lru_cache(maxsize=4)
def epoch_order(n_prompts: int, seed: int, epoch: int) -> list[int]:
    return torch.randperm(n_prompts, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()


def prompt_batch(prompts: list[dict], step: int, batch_size: int, seed: int) -> list[dict]:
    """The B prompts of a step: a fixed permutation per epoch, so a resumed run sees the same data."""
    batch = []
    for i in range(step * batch_size, (step + 1) * batch_size):
        epoch, position = divmod(i, len(prompts))
        batch.append(prompts[epoch_order(len(prompts), seed, epoch)[position]])
    return batch


def dump_samples(path: str, step: int, prompts, texts, scores, n_prompts: int = 2) -> None:
    """A few sampled responses with their rubric verdicts: reading samples is how RL runs are debugged."""
    with open(path, "a") as f:
        f.write(f"\n===== step {step} =====\n")
        for b in range(min(n_prompts, len(prompts))):
            f.write(f"[{prompts[b]['id']}] {prompts[b]['prompt']}\n")
            for g, text in enumerate(texts[b]):
                marks = "".join("+" if s > 0 else "-" for s in scores[b, g, :len(prompts[b]["rubrics"])].tolist())
                f.write(f"  {marks:8s} {text!r}\n")


def collapse_warning(first: dict, now: dict) -> str:
    """RTT_SPEC §8: responses shrinking towards EOS, or the pass rate falling, is an absorbing state."""
    if now["completions/mean_length"] < 0.4 * first["completions/mean_length"]:
        return f"mean response length fell from {first['completions/mean_length']:.1f} to {now['completions/mean_length']:.1f}"
    if now["rubric/pass_rate"] < 0.6 * first["rubric/pass_rate"]:
        return f"rubric pass rate fell from {first['rubric/pass_rate']:.2f} to {now['rubric/pass_rate']:.2f}"
    return ""


def held_out_splits(prompts: list[dict], seed: int = 0) -> dict[str, list[dict]]:
    """train / val / test of a real rubric dataset: a fixed shuffle, 10 % (1..64 prompts) each for val and test."""
    if len(prompts) < 3:
        raise SystemExit(f"need at least 3 prompts to hold out validation and test prompts, got {len(prompts)}")
    order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(seed)).tolist()
    shuffled = [prompts[i] for i in order]
    n_held = min(64, max(1, len(prompts) // 10))
    return {"test": shuffled[:n_held], "val": shuffled[n_held:2 * n_held], "train": shuffled[2 * n_held:]}


def load_task(cfg: Config) -> dict[str, list[dict]]:
    """Prompt splits: Rubric World's own (with held-out rubric combinations), or a real dataset held out by seed."""
    if cfg.data == "rubric_world":
        return data.make_splits(seed=0)                                          # DEVIATION(1): Rubric World
    try:
        if cfg.data == "ifeval":
            import ifeval
            prompts = ifeval.load_prompts()
        else:
            prompts = data.load_rubric_dataset(cfg.data)
    except ValueError as error:
        raise SystemExit(f"cannot read --data {cfg.data}: {error}") from error
    return held_out_splits(prompts)


def load_policy(cfg: Config, device: torch.device):
    """(model, tokenizer): the warm-started toy policy, or a real instruct model (real_models.load_policy)."""
    if cfg.policy == "toy":
        return policy_lib.load_or_build_toy_policy(device=str(device))
    try:
        return real_models.load_policy(cfg.policy, str(device), cfg.dtype, cfg.gradient_checkpointing)
    except (OSError, ValueError) as error:
        raise SystemExit(f"cannot load --policy {cfg.policy}: {error}") from error


def build_judge(cfg: Config, device: torch.device):
    """judge(prompts, responses) -> (rubric scores (B, G, K) in {+1, −1}, rubric_mask (B, K))."""
    if cfg.judge == "rule":
        return RuleJudge(data.CHECKERS)
    import ifeval                                                                # lm-eval is imported only here
    if cfg.judge == "ifeval":
        return ifeval.IFEvalJudge()
    try:
        judge_model, judge_tokenizer = real_models.load_policy(cfg.judge_model, str(device), cfg.dtype)
    except (OSError, ValueError) as error:
        raise SystemExit(f"cannot load --judge_model {cfg.judge_model}: {error}") from error
    llm_judge = LLMJudge(judge_model, judge_tokenizer)
    return llm_judge if cfg.judge == "llm" else HybridJudge({**data.CHECKERS, **ifeval.checkers()}, llm_judge)


def build_relevance_fn(cfg: Config, tokenizer, device: torch.device):
    """fn(prompts, response_ids (B, G, T), token_mask (B, G, T)) -> relevance w (B, G, K, T) float32."""
    if cfg.relevance == "oracle":
        return lambda ps, ids, mask: data.oracle_relevance(ps, ids, mask, tokenizer)  # noqa: E731
    if cfg.relevance != "discriminator":
        return discriminator.make_relevance_fn(kind=cfg.relevance, seed=cfg.seed)
    try:
        if cfg.policy == "toy":
            disc_model, disc_tokenizer = discriminator.load_or_train_toy_discriminator(device=str(device))
        else:
            disc_model, disc_tokenizer = discriminator.load_discriminator(cfg.discriminator, tokenizer, str(device))
        return discriminator.make_relevance_fn(disc_model, disc_tokenizer, policy_tokenizer=tokenizer,
                                               max_tokens_per_batch=cfg.max_batch_tokens
                                               or discriminator.INFERENCE_BATCH_TOKENS)
    except ValueError as error:
        raise SystemExit(f"cannot use the discriminator: {error}") from error


def main(argv: list[str]) -> dict:
    cfg = parse_config(argv)
    device = pick_device(cfg.device)
    prepare_out_dir(cfg)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    wall_start = time.time()

    # ---------------------------------------------------------------- setup: task, policy, judge, relevance
    splits = load_task(cfg)
    model, tokenizer = load_policy(cfg, device)
    judge = build_judge(cfg, device)
    relevance_fn = build_relevance_fn(cfg, tokenizer, device)
    ref_model = None
    if cfg.kl_coef > 0:                                                          # frozen π_ref = start policy
        ref_model = load_policy(cfg, device)[0].requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min((s + 1) / max(cfg.warmup_steps, 1), 1.0))
    start_step = 0
    if cfg.resume:
        state = load_checkpoint(cfg.resume, cfg)
        model.load_state_dict(state["policy"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        random.setstate(state["rng"]["python"])
        torch.set_rng_state(state["rng"]["torch"])
        start_step = state["step"]
        drop_lines_after(os.path.join(cfg.out_dir, "metrics.jsonl"), start_step - 1)   # steps logged after the
        drop_lines_after(os.path.join(cfg.out_dir, "evals.jsonl"), start_step)         # checkpoint are redone
        print(f"resumed from {cfg.resume} at step {start_step}")
    logger = Logger(cfg.out_dir, cfg.wandb_project, asdict(cfg))
    ckpt_path = os.path.join(cfg.out_dir, "ckpt.pt")

    def run_eval(split: str) -> dict:
        model.eval()
        return evaluation.evaluate(model, tokenizer, splits[split][:cfg.eval_prompts or None], judge,
                                   n_samples=cfg.eval_samples, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed,
                                   temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k)

    summary = {"config": asdict(cfg), "device": str(device)}
    start_path = os.path.join(cfg.out_dir, "start_eval.json")                 # kept so a resumed run reports it
    if cfg.final_eval:
        if not os.path.exists(start_path):
            evaluation.write_json(start_path, run_eval("test"))
        with open(start_path) as f:
            summary["start"] = json.load(f)
    first_metrics, collapse = None, ""
    print(f"training {cfg.preset}: λ={cfg.lam} {cfg.method}, reward {cfg.reward}, norm {cfg.norm}, relevance "
          f"{cfg.relevance}{f' (binary, w >= {cfg.relevance_threshold})' if cfg.relevance_threshold else ''}, B={cfg.prompts_per_step} G={cfg.group_size}, steps {start_step}->{cfg.max_steps}, {device}")
    progress = tqdm(range(start_step, cfg.max_steps), initial=start_step, total=cfg.max_steps, desc="RL", unit="step")
    try:
        for step in progress:
            timings = {}
            # ------------------------------------------------------------ 1. rollouts: G samples per prompt
            tic = time.perf_counter()
            prompts = prompt_batch(splits["train"], step, cfg.prompts_per_step, cfg.seed)         # B prompts
            prompt_ids = policy_lib.encode_prompts(tokenizer, prompts)
            sampler = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + step)
            model.eval()
            response_ids, token_mask = real_models.generate_chunked(              # chunks within the memory budget
                model, tokenizer, prompt_ids, cfg.group_size, cfg.max_new_tokens, cfg.max_batch_tokens or 1 << 62,
                temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k, generator=sampler)  # (B, G, T) x2
            timings["time/generate"] = time.perf_counter() - tic
            # ------------------------------------------------------------ 2. judge every rubric (rewards.py)
            tic = time.perf_counter()
            texts = policy_lib.decode_responses(tokenizer, response_ids, token_mask)   # B x G strings
            rubric_scores, rubric_mask = judge(prompts, texts)                    # (B, G, K), (B, K)
            rubric_scores, rubric_mask = rubric_scores.to(device), rubric_mask.to(device)
            timings["time/judge"] = time.perf_counter() - tic
            # ------------------------------------------------------------ 3. token relevance (discriminator.py)
            tic = time.perf_counter()
            if cfg.lam > 0:
                relevance = relevance_fn(prompts, response_ids, token_mask)       # (B, G, K, T)
                if cfg.relevance_threshold > 0:                                   # binary mask: no z-scored noise
                    relevance = (relevance >= cfg.relevance_threshold).float()
            else:                                                                 # GRPO needs no relevance
                relevance = torch.zeros(*rubric_scores.shape, token_mask.shape[-1], device=device)
            timings["time/relevance"] = time.perf_counter() - tic
            # ------------------------------------------------------------ 4. advantages (normalize.py)
            tic = time.perf_counter()
            token_term_mask = token_mask if cfg.eos_token_advantage else (          # (B, G, T)
                token_mask & (response_ids != tokenizer.eos_token_id))
            resp_reward, resp_adv, tok_adv, advantages = rtt_advantages(          # R, Â, Ã, A
                cfg, rubric_scores, rubric_mask, relevance, token_term_mask)
            # ------------------------------------------------------------ 5. policy update (rtt_grpo.py)
            model.train()
            flat_ids, flat_mask = response_ids.flatten(0, 1), token_mask.flatten(0, 1)  # (N, T)
            flat_adv = advantages.flatten(0, 1)                                   # (N, T)
            flat_prompts = [ids for ids in prompt_ids for _ in range(cfg.group_size)]   # N prompt id lists
            row_tokens = max(len(ids) for ids in prompt_ids) + flat_ids.shape[1]  # P + T
            pieces = real_models.microbatches(len(flat_prompts), row_tokens, cfg.max_batch_tokens or 1 << 62)
            weights = loss_weights(pieces, flat_mask, cfg.loss_agg)               # sum to 1 over the pieces

            def logprobs(policy_model, rows: slice) -> torch.Tensor:               # (rows, T)
                return policy_lib.response_logprobs(policy_model, flat_prompts[rows], flat_ids[rows],
                                                    flat_mask[rows], tokenizer)

            with torch.no_grad():                                                 # π_θold: once per batch
                old_logp = torch.cat([logprobs(model, rows) for rows in pieces])  # (N, T)
                ref_logp = None if ref_model is None else torch.cat([logprobs(ref_model, rows) for rows in pieces])
            for _ in range(cfg.ppo_epochs):
                optimizer.zero_grad(set_to_none=True)
                loss, loss_metrics = 0.0, {}
                for rows, weight in zip(pieces, weights):                         # gradient accumulation
                    piece_loss, piece_metrics = policy_loss(
                        logprobs(model, rows), old_logp[rows], flat_adv[rows], flat_mask[rows], cfg.clip_low,
                        cfg.clip_high, cfg.loss_agg, None if ref_logp is None else ref_logp[rows], cfg.kl_coef)
                    (piece_loss * weight).backward()
                    loss += piece_loss.item() * weight
                    for name, value in piece_metrics.items():                     # extremes stay extremes
                        combine = {"ratio_min": min, "ratio_max": max}.get(name)
                        loss_metrics[name] = (combine(loss_metrics.get(name, value), value) if combine else
                                              loss_metrics.get(name, 0.0) + float(value) * weight)
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
            scheduler.step()
            timings["time/update"] = time.perf_counter() - tic
            # ------------------------------------------------------------ 6. log, samples, eval, checkpoint
            passed = (rubric_scores > 0) & rubric_mask[:, None, :]                # (B, G, K)
            metrics = {
                "reward/mean": resp_reward.mean().item(),
                "reward/frac_zero_std": (resp_reward.std(dim=1) == 0).float().mean().item(),
                "rubric/pass_rate": (passed.sum() / (rubric_mask.sum() * cfg.group_size)).item(),
                "adv/resp_abs_mean": resp_adv.abs().mean().item(),
                "adv/token_abs_mean": (tok_adv.abs().sum() / token_mask.sum().clamp(min=1)).item(),
                "relevance/mean": (relevance.sum() / (token_mask.sum() * rubric_mask.shape[1]).clamp(min=1)).item(),
                "completions/mean_length": token_mask.sum(-1).float().mean().item(),
                "completions/frac_truncated": (token_mask[..., -1] & (response_ids[..., -1] != tokenizer.eos_token_id)).float().mean().item(),
                "loss/policy": loss,
                "clip_frac": loss_metrics["clip_frac"], "kl_old": loss_metrics["approx_kl_old"],
                "kl_ref": loss_metrics["kl_ref"], "grad_norm": float(grad_norm), "lr": scheduler.get_last_lr()[0],
                **timings, "time/step": sum(timings.values()),
            }
            first_metrics = first_metrics or metrics
            warning = collapse_warning(first_metrics, metrics)
            if warning and not collapse:
                collapse = f"step {step}: {warning}"
                tqdm.write(f"!!! COLLAPSE at step {step}: {warning} (RTT_SPEC §8)")
            logger.log(step, metrics)
            progress.set_postfix(reward=f"{metrics['reward/mean']:.2f}", pass_rate=f"{metrics['rubric/pass_rate']:.2f}",
                                 length=f"{metrics['completions/mean_length']:.1f}")
            if cfg.sample_every and step % cfg.sample_every == 0:
                dump_samples(os.path.join(cfg.out_dir, "samples.txt"), step, prompts, texts, rubric_scores)
            if cfg.eval_every and (step + 1) % cfg.eval_every == 0:
                result = run_eval("val")
                with open(os.path.join(cfg.out_dir, "evals.jsonl"), "a") as f:
                    f.write(json.dumps({"step": step + 1, **result}) + "\n")
                tqdm.write(f"step {step + 1:5d} | val instruction acc {result['sampled']['instruction_accuracy']:.3f} "
                           f"(greedy {result['greedy']['instruction_accuracy']:.3f}) | rubric acc "
                           f"{result['sampled']['rubric_accuracy']:.3f}")
            if (step + 1) % cfg.ckpt_every == 0 or step + 1 == cfg.max_steps:
                save_checkpoint(ckpt_path, model, optimizer, scheduler, step + 1, cfg)
    except KeyboardInterrupt:
        progress.close()
        print(f"\ninterrupted; the last checkpoint ({ckpt_path}) is intact: resume with --resume {ckpt_path}")
        sys.exit(130)
    progress.close()

    # ---------------------------------------------------------------- summary
    if cfg.final_eval:
        summary["final"] = run_eval("test")
        if "test_unseen_combos" in splits:                                        # Rubric World's held-out combinations
            summary["final_unseen_combos"] = run_eval("test_unseen_combos")
    summary.update(wall_seconds=round(time.time() - wall_start, 1), collapse=collapse or None,
                   outputs={name: os.path.join(cfg.out_dir, name) for name in
                            ("metrics.jsonl", "evals.jsonl", "samples.txt", "ckpt.pt", "summary.json")})
    evaluation.write_json(os.path.join(cfg.out_dir, "summary.json"), summary)
    print_summary(summary)
    return summary


def print_summary(summary: dict) -> None:
    print("\n" + "=" * 72)
    for name in ("start", "final", "final_unseen_combos"):
        if name in summary:
            r = summary[name]
            print(f"{name:>20}: instruction acc {r['instruction_accuracy']:.3f} | rubric acc {r['rubric_accuracy']:.3f} "
                  f"(sampled) | greedy {r['greedy']['instruction_accuracy']:.3f} / {r['greedy']['rubric_accuracy']:.3f}")
    print(f"{'wall time':>20}: {summary['wall_seconds']:.0f} s" + (f" | COLLAPSE {summary['collapse']}" if summary["collapse"] else ""))
    print(f"{'outputs':>20}: {os.path.dirname(summary['outputs']['summary.json'])}/")


if __name__ == "__main__":
    main(sys.argv[1:])
