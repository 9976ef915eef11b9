"""
train.py — RTT-GRPO: one readable training loop that wires the concept files together.

Paper:    paper §3 (the training step); METHOD.md §3 steps 1–9, the authors' settings in §8.
Run:      python train.py                 # toy preset: Rubric World, tiny policy, CPU, minutes
          python train.py --lam 0         # the same run as plain GRPO;  --help lists every flag
          python train.py smollm2         # SmolLM2-135M-Instruct on IFEval-style prompts, about an hour on 2 cores
          python train.py paper --data rubrics.jsonl ...   # the authors' settings (a GPU)
Outputs:  out_dir/metrics.jsonl (one line per step), samples.txt (responses, verdicts, token advantages), evals.jsonl,
          ckpt.pt, start_eval.json, summary.json, token_advantages.png. An earlier run is moved to out_dir-<time>.

One step (letters as in the dimension legend):

  prompts (B) ── policy samples G each ──► responses (B, G, T)                          1. rollout.py
                       │                                  │
          rewards.py   │ judge every rubric               │ discriminator.py: which tokens matter for which rubric
                       ▼                                  ▼
          rubric scores s (B, G, K)  2.          relevance w (B, G, K, T)  3.
                       └───────────────┬──────────────────┘
    rewards.py, normalize.py           ▼  R (B, G) → Â (B, G);  r = s·w (B, G, K, T) → Ã (B, G, T)      4.
    rtt_grpo.py                        ▼  A = Â + λ·Ã (B, G, T) ──► clipped surrogate ──► loss ()       5.

Presets.  toy (default) | smollm2 | paper: one table, PRESETS below; flags override a preset's values.
Memory.   --max_batch_tokens bounds every forward (generation, log-probs, backward) by sequence positions.

Deviations (numbered as in METHOD.md §9, tagged `# DEVIATION(n)`):
  5. The toy preset replaces the 4B–7B instruct policy, DeepSeek judge and LLM-trained discriminator with
     a 2-layer policy, a rule judge and a 2-layer discriminator, all built locally (see README).
  6. The toy preset binarises the relevance weights at 0.5 and gives the end-of-sequence token the
     response-level advantage only; flags restore the paper's soft weights and token-level EOS (README).
  7. As in the authors' pipeline w = 0 at the end-of-sequence token, which our discriminator does read.
With one pass per batch (μ = 1, the paper's runs) π_θold = π_θ: old log-probs are the current ones, detached.

Logged metrics: loss/policy stays near 0 by construction (advantages have zero mean within each group); judge by
reward/mean and rubric/pass_rate. reward/frac_zero_std near 1: almost every group is tied, GRPO has no signal.
"""

import json
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field

import torch
from tqdm import tqdm
from transformers import HfArgumentParser

import eval as evaluation
import released_code
from discriminator import INFERENCE_BATCH_TOKENS, random_relevance, relevance, uniform_relevance
from normalize import TOKEN_NORMS, rtt_advantages, token_advantages
from policies.loading import load_for_training, load_policy, pick_device
from policies.rollout import UNLIMITED, decode_responses, encode_prompts, generate, microbatches, response_logprobs
from relevance.build import discriminator_for
from relevance.rubric_world_labels import oracle_relevance
from rewards import response_reward
from rtt_grpo import LOSS_AGGREGATIONS, policy_loss
from runs import checkpoints, outputs
from runs.files import write_json
from tasks import registry
from tasks.rubric_world import MAX_NEW_TOKENS

# Every preset in one table; a field a preset does not name keeps the Config default (= the toy run).
PRESETS = {
    # CPU, offline, minutes. DEVIATION(6): binary relevance (soft weights: the intra-sample z-score turned small, nearly
    # constant weights into O(1) noise, the policy collapsed); EOS keeps only the response advantage (RESULTS.md).
    "toy": dict(relevance_threshold=0.5, eos_token_advantage=False),
    # SmolLM2-135M-Instruct on 4,000 prompts in IFEval's style that are not IFEval's (tasks/ifeval_train.py, built on
    # first use), IFEval's checkers; IFEval and IFBench stay held out for eval.py. Its discriminator is built on first
    # use (its own responses, minimal edits found by checker search: relevance/build.py). About an hour on 2 CPU cores.
    "smollm2": dict(policy="smollm2", data="ifeval_train", judge="ifeval", relevance="discriminator", group_size=4,
                    prompts_per_step=2, max_steps=60, lr=1e-6, warmup_steps=20, max_new_tokens=128,
                    temperature=0.99, top_p=0.99, top_k=100, max_batch_tokens=16384, eval_every=20,
                    eval_prompts=16, eval_samples=2, out_dir="out/smollm2"),
    # METHOD.md §8, the authors' run: any hub policy via --policy, a GPU with bf16 assumed; needs --data.
    "paper": dict(policy="Qwen/Qwen3-4B-Instruct-2507", data="", judge="hybrid", group_size=8, prompts_per_step=64,
                  max_steps=500, lr=1e-6, warmup_steps=20, max_new_tokens=4096, temperature=0.99, top_p=0.99,
                  top_k=100, gradient_checkpointing=True, max_batch_tokens=262144, out_dir="out/paper"),
}
RELEVANCE_KINDS = ("discriminator", "oracle", "uniform", "random")
# fields that define a run: a checkpoint made with other values cannot be resumed under this config
RUN_DEFINING = ("preset", "policy", "data", "judge", "lam", "method", "reward", "norm", "relevance", "eps",
                "relevance_threshold", "eos_token_advantage", "group_size", "prompts_per_step", "lr", "warmup_steps",
                "max_grad_norm", "clip_low", "clip_high", "kl_coef", "loss_agg", "ppo_epochs", "temperature", "top_p",
                "top_k", "max_new_tokens", "seed")


def arg(default, help: str):
    """A Config field with its --help text (the paper's symbol and the TRL / ROLL name where there is one)."""
    return field(default=default, metadata={"help": help})


@dataclass
class Config:
    preset: str = arg("toy", f"named settings: {' | '.join(PRESETS)} (also positional)")
    policy: str = arg("toy", "toy (built locally) | smollm2 | a save_pretrained dir or hub id")
    data: str = arg("rubric_world", "rubric_world | ifeval | a JSONL / saved datasets dir / name of rubric prompts")
    judge: str = arg("rule", f"{' | '.join(registry.JUDGES)} (rule = Rubric World's checkers)")
    judge_model: str = arg("", "causal LM of the llm / hybrid judge (dir or hub id)")
    discriminator: str = arg("", "a saved discriminator dir (default: built for the policy and data on first use)")
    dtype: str = arg("auto", "auto (bf16 on CUDA, else fp32) | float32 | bfloat16")
    gradient_checkpointing: bool = arg(False, "recompute activations in backward")
    max_batch_tokens: int = arg(0, "generate, back-propagate and run the discriminator in pieces of at most this many "
                                   "positions (0 = one batch; the discriminator: INFERENCE_BATCH_TOKENS)")
    # RTT ------------------------------------------------------------------------------------------
    lam: float = arg(0.5, "λ: weight of the token advantage; 0 gives GRPO exactly")
    method: str = arg("add", "add: Â + λÃ | mix: (1−λ)Â + λÃ")
    reward: str = arg("aon", "response reward: aon (all-or-nothing) | mean (CSR)")
    norm: str = arg("intra", f"token normalisation: {' | '.join(TOKEN_NORMS)} | released_code (the authors', as it "
                             "runs)")
    relevance: str = arg("discriminator", f"w: {' | '.join(RELEVANCE_KINDS)}")
    relevance_threshold: float = arg(0.0, "0: soft weights w (the paper); > 0: w = 1 where w >= threshold, else 0")
    eos_token_advantage: bool = arg(True, "True: the end-of-sequence token is in the token-level term (the paper); "
                                          "False: it gets the response-level advantage only")
    eps: float = arg(1e-6, "ε added to every std")
    # GRPO -----------------------------------------------------------------------------------------
    group_size: int = arg(8, "G: responses per prompt [TRL: num_generations]")
    prompts_per_step: int = arg(16, "B: prompts per step [ROLL: rollout_batch_size]")
    max_steps: int = arg(100, "RL steps [TRL: max_steps]")
    lr: float = arg(2e-4, "AdamW learning rate")
    warmup_steps: int = arg(10, "linear learning-rate warm-up steps")
    max_grad_norm: float = arg(1.0, "gradient clipping by global norm")
    clip_low: float = arg(0.2, "ε_low: ratio clip below 1 [TRL: epsilon]")
    clip_high: float = arg(0.27, "ε_high: ratio clip above 1 [TRL: epsilon_high]")
    kl_coef: float = arg(0.0, "β: k3 KL penalty to the start policy [TRL: beta]")
    loss_agg: str = arg("seq-mean-token-mean", " | ".join(LOSS_AGGREGATIONS))
    ppo_epochs: int = arg(1, "μ: optimisation passes over each batch [TRL: num_iterations]")
    # sampling -------------------------------------------------------------------------------------
    temperature: float = arg(1.0, "sampling temperature τ (paper: 0.99)")
    top_p: float = arg(1.0, "nucleus sampling (paper: 0.99)")
    top_k: int = arg(0, "top-k sampling, 0 = off (paper: 100)")
    max_new_tokens: int = arg(MAX_NEW_TOKENS, "response length cap")
    # bookkeeping ----------------------------------------------------------------------------------
    seed: int = arg(0, "seeds data order, sampling and initialisation")
    device: str = arg("auto", "auto (cuda > mps > cpu) | cpu | cuda | mps")
    out_dir: str = arg("out/toy", "where metrics, samples and checkpoints go")
    eval_every: int = arg(50, "steps between validation evals (0 = off)")
    eval_samples: int = arg(4, "sampled responses per prompt in evaluation")
    eval_prompts: int = arg(0, "evaluate on the first n prompts of a split (0 = all)")
    sample_every: int = arg(25, "steps between sample dumps to samples.txt")
    ckpt_every: int = arg(50, "steps between checkpoints")
    resume: str = arg("", "path of a ckpt.pt to continue from")
    overwrite: bool = arg(False, "delete an earlier run in out_dir instead of moving it")
    final_eval: bool = arg(True, "evaluate start and final policy on the test split")
    wandb_project: str = arg("", "log to this wandb project (off when empty)")


def parse_config(argv: list[str]) -> Config:
    """`python train.py [preset] [--flag value ...]` (or --preset NAME): the preset sets defaults, flags override
    them."""
    positional = argv[:1] if argv and not argv[0].startswith("-") else []
    flags = argv[len(positional):]
    named = [flags[i + 1] for i, f in enumerate(flags[:-1]) if f == "--preset"] + [
        f.split("=", 1)[1] for f in flags if f.startswith("--preset=")]
    if len(set(positional + named)) > 1:
        raise SystemExit(f"two presets given: {' and '.join(sorted(set(positional + named)))}")
    preset = (positional + named + [Config.preset])[0]
    if preset not in PRESETS:
        raise SystemExit(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    parser = HfArgumentParser(Config, formatter_class=evaluation.HelpFormatter)
    parser.set_defaults(preset=preset, **PRESETS[preset])
    try:
        (cfg,) = parser.parse_args_into_dataclasses(args=flags)
    except ValueError as error:                                                  # an unknown flag, a typo
        raise SystemExit(f"{error} (python train.py --help lists every flag)") from error
    choices = {"method": ("add", "mix"), "reward": ("aon", "mean"), "norm": TOKEN_NORMS + ("released_code",),
               "relevance": RELEVANCE_KINDS, "loss_agg": LOSS_AGGREGATIONS, "judge": registry.JUDGES}
    for name, allowed in choices.items():
        if getattr(cfg, name) not in allowed:
            raise SystemExit(f"--{name} {getattr(cfg, name)!r} is not one of {', '.join(allowed)}")
    if cfg.dtype == "float16":
        raise SystemExit("--dtype float16 needs loss scaling, which this loop does not do; use bfloat16")
    if cfg.lam < 0 or cfg.group_size < 2 or cfg.prompts_per_step < 1 or cfg.max_steps < 1:
        raise SystemExit("need --lam >= 0, --group_size >= 2, --prompts_per_step >= 1, --max_steps >= 1")
    refusals = [
        (not cfg.data, f"preset {cfg.preset!r} needs --data: ifeval, or a JSONL / datasets dir or name of rubric "
                       "prompts"),
        (cfg.policy == "toy" and not registry.is_rubric_world(cfg.data),
         f"the toy policy only knows Rubric World's words; for --data {cfg.data} use --policy smollm2 or a model path"),
        (cfg.relevance == "oracle" and not registry.is_rubric_world(cfg.data),
         "--relevance oracle needs Rubric World (its minimal-edit labels); choose discriminator, uniform or random"),
        (cfg.judge in registry.LLM_JUDGES and not cfg.judge_model,
         f"--judge {cfg.judge} needs --judge_model (a causal LM directory or hub id)"),
        (cfg.judge_model and cfg.judge not in registry.LLM_JUDGES,
         f"--judge_model is read by the llm and hybrid judges only, not by --judge {cfg.judge}"),
        (cfg.discriminator and cfg.relevance != "discriminator",
         f"--discriminator is read by --relevance discriminator only, not by --relevance {cfg.relevance}"),
        (cfg.norm == "released_code" and (not cfg.eos_token_advantage or cfg.relevance_threshold),
         "--norm released_code reproduces the released pipeline whole: add --eos_token_advantage True "
         "--relevance_threshold 0 (its weights are truncated to integers inside; released_code.py)")]
    for refused, message in refusals:
        if refused:
            raise SystemExit(message)
    return cfg


def train(cfg: Config) -> dict:
    # ---------------------------------------------------------------- setup: task, policy, judge, relevance
    device = pick_device(cfg.device)
    wall_start = time.time()
    outputs.start_run(cfg.out_dir, bool(cfg.resume), cfg.overwrite)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    splits = load(lambda: registry.load_splits(cfg.data))
    model, tokenizer, amp = load(lambda: load_for_training(  # float32 weights, forward passes in cfg.dtype
        cfg.policy, str(device), cfg.dtype, cfg.gradient_checkpointing))
    judge_llm = load(lambda: load_policy(cfg.judge_model, str(device), cfg.dtype)) if cfg.judge_model else None
    judge = load(lambda: registry.make_judge(cfg.judge, judge_llm))
    uses_discriminator = cfg.lam > 0 and cfg.relevance == "discriminator"     # built once and cached; DEVIATION(5)
    discriminator = load(lambda: discriminator_for(cfg.policy, cfg.data, tokenizer, str(device), cfg.discriminator)
                         ) if uses_discriminator else None
    relevance_generator = torch.Generator().manual_seed(cfg.seed)              # draws of --relevance random
    ref_model = None if cfg.kl_coef == 0 else load_policy(cfg.policy, str(device), cfg.dtype)[0]  # π_ref
    token_norm = token_advantages if cfg.norm in TOKEN_NORMS else released_code.token_advantages  # never a default
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0,     # fused: one kernel for all
                                  fused=device.type in ("cpu", "cuda"))        # tensors, SmolLM2 step 1.69 -> 0.23 s
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min((s + 1) / max(cfg.warmup_steps, 1), 1.0))
    generators = {"relevance": relevance_generator} if cfg.relevance == "random" else {}   # saved in checkpoints
    state = checkpoints.resume(cfg.resume, asdict(cfg), RUN_DEFINING, model, optimizer, scheduler,
                               generators) if cfg.resume else {}       # {"step", "collapse_guard", "collapse"}
    start_step = state.get("step", 0)
    collapse = state.get("collapse", "")
    guard = outputs.CollapseGuard(state.get("collapse_guard"))                 # METHOD.md §10, over 10-step means
    logger = outputs.Logger(cfg.out_dir, cfg.wandb_project, asdict(cfg))

    def run_eval(split: str) -> dict:                                            # within the memory budget too
        with amp():
            return evaluation.evaluate(model, tokenizer, splits[split][:cfg.eval_prompts or None], judge,
                                       cfg.eval_samples, cfg.max_new_tokens, cfg.seed,
                                       cfg.max_batch_tokens or UNLIMITED,
                                       temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k)

    summary = {"config": asdict(cfg), "device": str(device)}
    start_path = os.path.join(cfg.out_dir, "start_eval.json")
    if cfg.final_eval:                                                           # kept so a resumed run reports it
        if not os.path.exists(start_path):
            write_json(start_path, run_eval("test"))
        with open(start_path) as f:
            summary["start"] = json.load(f)
    print(f"training {cfg.preset}: λ={cfg.lam} {cfg.method}, reward {cfg.reward}, norm {cfg.norm}, "
          f"relevance {cfg.relevance}"
          f"{f' (w >= {cfg.relevance_threshold})' if cfg.relevance_threshold else ''}, B={cfg.prompts_per_step} "
          f"G={cfg.group_size}, steps {start_step}->{cfg.max_steps}, {device}")
    shown = None
    progress = tqdm(range(start_step, cfg.max_steps), initial=start_step, total=cfg.max_steps, desc="RL", unit="step")
    for step in progress:
        # ------------------------------------------------------------ 1. rollouts: G samples per prompt (rollout.py)
        tic = time.perf_counter()
        prompts = registry.prompt_batch(splits["train"], step, cfg.prompts_per_step, cfg.seed)  # B prompts
        prompt_ids = encode_prompts(tokenizer, prompts)
        sampler = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + step)
        model.eval()
        with amp():
            response_ids, token_mask = generate(                             # (B, G, T) x2, in memory-sized chunks
                model, tokenizer, prompt_ids, cfg.group_size, cfg.max_new_tokens, cfg.max_batch_tokens or UNLIMITED,
                temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k, generator=sampler)
        timings = {"time/generate": time.perf_counter() - tic}
        # ------------------------------------------------------------ 2. judge every rubric: s (rewards.py)
        tic = time.perf_counter()
        texts = decode_responses(tokenizer, response_ids, token_mask)        # B x G strings
        rubric_scores, rubric_mask = (x.to(device) for x in judge(prompts, texts))  # (B, G, K) ±1, (B, K)
        timings["time/judge"] = time.perf_counter() - tic
        # ------------------------------------------------------------ 3. token relevance: w (discriminator.py)
        tic = time.perf_counter()
        relevance = (token_relevance(cfg.relevance, prompts, response_ids, token_mask, discriminator, tokenizer,
                                     relevance_generator, cfg.max_batch_tokens) if cfg.lam > 0     # (B, G, K, T)  w
                     else torch.zeros(*rubric_scores.shape, token_mask.shape[-1], device=device))  # GRPO: none
        timings["time/relevance"] = time.perf_counter() - tic
        # ------------------------------------------------------------ 4. advantages (rewards.py, normalize.py)
        resp_reward = response_reward(rubric_scores, rubric_mask, cfg.reward)  # (B, G)  R
        is_eos = token_mask & (response_ids == tokenizer.eos_token_id)         # (B, G, T)
        adv = rtt_advantages(resp_reward, rubric_scores, rubric_mask, relevance, token_mask, is_eos, cfg.norm,
                             cfg.lam, cfg.method, cfg.relevance_threshold, cfg.eos_token_advantage, cfg.eps,
                             token_norm)                # Â (B, G), Ã (B, G, T), A = Â + λ·Ã (B, G, T); DEVIATION(6, 7)
        # ------------------------------------------------------------ 5. policy update (rtt_grpo.py)
        tic = time.perf_counter()
        loss, loss_metrics, grad_norm = policy_update(model, ref_model, optimizer, tokenizer, cfg, prompt_ids,
                                                      response_ids, token_mask, adv.combined, amp)
        scheduler.step()
        timings["time/update"] = time.perf_counter() - tic
        # ------------------------------------------------------------ 6. log, samples, eval, checkpoint
        metrics = {**outputs.step_metrics(rubric_scores, rubric_mask, resp_reward, adv.response, adv.token,
                                          adv.relevance,
                                            response_ids, token_mask, tokenizer.eos_token_id),
                   "loss/policy": loss, "clip_frac": loss_metrics["clip_frac"], "kl_old": loss_metrics["approx_kl_old"],
                   "kl_ref": loss_metrics["kl_ref"], "grad_norm": grad_norm, "lr": scheduler.get_last_lr()[0],
                   **registry.batch_metrics(cfg.data, prompts, texts), **timings, "time/step": sum(timings.values())}
        if (warning := guard.update(metrics)) and not collapse:
            collapse = f"step {step}: {warning}"
            tqdm.write(f"!!! COLLAPSE at step {step}: {warning} (METHOD.md §10)")
        logger.log(step, metrics)
        progress.set_postfix(reward=f"{metrics['reward/mean']:.2f}", pass_rate=f"{metrics['rubric/pass_rate']:.2f}",
                             length=f"{metrics['completions/mean_length']:.1f}")
        shown = (step, prompts, rubric_scores, response_ids, token_mask, adv.combined)   # printed at the end
        if cfg.sample_every and step % cfg.sample_every == 0:
            outputs.dump_samples(os.path.join(cfg.out_dir, "samples.txt"), step, tokenizer, prompts, texts,
                                   rubric_scores, response_ids, token_mask, adv.combined)
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0:
            logger.log_eval(step + 1, run_eval("val"))
        if (step + 1) % cfg.ckpt_every == 0 or step + 1 == cfg.max_steps:
            checkpoints.save_checkpoint(os.path.join(cfg.out_dir, "ckpt.pt"), model, optimizer, scheduler, step + 1,
                                      asdict(cfg), {"collapse_guard": guard.state, "collapse": collapse}, generators)
    progress.close()
    # ---------------------------------------------------------------- summary
    if cfg.final_eval:
        summary["final"] = run_eval("test")
        if splits.get("test_unseen_combos"):                                     # Rubric World's held-out combinations
            summary["final_unseen_combos"] = run_eval("test_unseen_combos")
    summary.update(wall_seconds=round(time.time() - wall_start, 1), collapse=collapse or None,
                   outputs={name: os.path.join(cfg.out_dir, name) for name in
                            ("metrics.jsonl", "evals.jsonl", "samples.txt", "ckpt.pt", "summary.json",
                             "token_advantages.png")})
    write_json(os.path.join(cfg.out_dir, "summary.json"), summary)
    outputs.print_summary(summary, tokenizer, shown)
    return summary


# ============================================================================ the loop's helpers
def load(build):
    """Run a loader; a missing model, package or file stops the run with its message, not a traceback."""
    try:
        return build()
    except (OSError, ValueError) as error:
        raise SystemExit(f"cannot start the run: {error}") from error


def token_relevance(kind: str, prompts: list[dict], response_ids: torch.Tensor, token_mask: torch.Tensor,
                    discriminator, policy_tokenizer, generator: torch.Generator, max_batch_tokens: int) -> torch.Tensor:
    """w (B, G, K, T) of a batch, by --relevance kind (checked once, in parse_config): the discriminator's inference
    (discriminator.relevance on a (model, tokenizer) pair), its ablations, or Rubric World's oracle labels.
    Shapes: response_ids, token_mask (B, G, T)."""
    if kind == "discriminator":
        model, disc_tokenizer = discriminator
        budget = max_batch_tokens or INFERENCE_BATCH_TOKENS
        return relevance(model, disc_tokenizer, prompts, response_ids, token_mask, budget)
    if kind == "uniform":
        return uniform_relevance(prompts, response_ids, token_mask)
    if kind == "random":
        return random_relevance(prompts, response_ids, token_mask, generator=generator)
    return oracle_relevance(prompts, response_ids, token_mask, policy_tokenizer)   # "oracle": Rubric World only


def policy_update(model, ref_model, optimizer, tokenizer, cfg: Config, prompt_ids, response_ids, token_mask,
                  advantages, amp) -> tuple[float, dict, float]:
    """ppo_epochs optimiser steps on one batch over row micro-batches within max_batch_tokens (gradient accumulation,
    exactly the one-batch gradient), forward passes under amp() (bf16 autocast on float32 weights). Shapes:
    response_ids, token_mask, advantages A (B, G, T). Returns (loss, metrics over the whole batch, grad norm)."""
    model.train()
    flat_ids = response_ids.flatten(0, 1)                                        # (N, T)
    flat_mask = token_mask.flatten(0, 1)                                         # (N, T)
    flat_adv = advantages.flatten(0, 1)                                          # (N, T)  A
    flat_prompts = [ids for ids in prompt_ids for _ in range(cfg.group_size)]   # N prompt id lists
    row_tokens = max(len(ids) for ids in prompt_ids) + flat_ids.shape[1]          # P + T
    pieces = microbatches(len(flat_prompts), row_tokens, cfg.max_batch_tokens or UNLIMITED)
    weights = loss_weights(pieces, flat_mask, cfg.loss_agg)                       # sum to 1 over the pieces

    def logprobs(policy_model, rows: slice) -> torch.Tensor:                      # (rows, T) log π_τ, tempered
        with amp():
            return response_logprobs(policy_model, flat_prompts[rows], flat_ids[rows], flat_mask[rows], tokenizer,
                                     cfg.temperature)

    with torch.no_grad():      # with μ = 1, π_θold = π_θ, so old log-probs are logp.detach(): no extra forward
        old_logp = None if cfg.ppo_epochs == 1 else torch.cat([logprobs(model, rows) for rows in pieces])  # (N, T)
        ref_logp = None if ref_model is None else torch.cat([logprobs(ref_model, rows) for rows in pieces])
    for _ in range(cfg.ppo_epochs):
        optimizer.zero_grad(set_to_none=True)
        loss = 0.0
        new_logp = []
        for rows, weight in zip(pieces, weights):
            logp = logprobs(model, rows)                                          # (rows, T)
            piece_loss, _ = policy_loss(logp, logp.detach() if old_logp is None else old_logp[rows], flat_adv[rows],
                                        flat_mask[rows], cfg.clip_low, cfg.clip_high, cfg.loss_agg,
                                        None if ref_logp is None else ref_logp[rows], cfg.kl_coef)
            (piece_loss * weight).backward()
            loss += piece_loss.item() * weight
            new_logp.append(logp.detach())
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        optimizer.step()
    new_logp = torch.cat(new_logp)                                                # (N, T) of the last epoch
    _, metrics = policy_loss(new_logp, new_logp if old_logp is None else old_logp, flat_adv, flat_mask, cfg.clip_low,
                             cfg.clip_high, cfg.loss_agg, ref_logp, cfg.kl_coef)  # clip and KL over every token
    return loss, metrics, float(grad_norm)


def loss_weights(pieces: list[slice], token_mask: torch.Tensor, loss_agg: str) -> list[float]:
    """Weight of each row piece's loss so that the weighted sum is the full-batch loss: its share of the
    sequences (seq-mean-token-mean) or of the valid tokens (token-mean). token_mask (N, T) bool."""
    if loss_agg == "token-mean":
        counts = [float(token_mask[rows].sum()) for rows in pieces]
    else:
        counts = [float(rows.stop - rows.start) for rows in pieces]
    return [count / max(sum(counts), 1.0) for count in counts]


def main(argv: list[str]) -> dict:
    cfg = parse_config(argv)
    try:
        return train(cfg)
    except KeyboardInterrupt:                                                    # checkpoints are written atomically
        ckpt = os.path.join(cfg.out_dir, "ckpt.pt")
        print("\ninterrupted; " + (f"resume with --resume {ckpt}" if os.path.exists(ckpt) else "no checkpoint yet"))
        sys.exit(130)


if __name__ == "__main__":
    main(sys.argv[1:])
