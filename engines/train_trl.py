"""
engines/train_trl.py — train.py's presets and flags, run by TRL's GRPOTrainer with RTT's token term
(engines/trl_rtt.py): one process on a CPU or a GPU, or many with accelerate (README "Scaling out").

Run:   python engines/train_trl.py                          # toy preset, one process (CPU: minutes)
       python engines/train_trl.py smollm2 --max_steps 10   # SmolLM2-135M-Instruct on IFEval's prompts
       accelerate launch --num_processes 8 --config_file engines/accelerate/zero3.yaml engines/train_trl.py paper \\
           --data my_rubrics.jsonl                           # 8 GPUs, DeepSpeed ZeRO-3
       torchrun --nproc_per_node 2 engines/train_trl.py      # two processes on a CPU (gloo): what the tests check
Flags: as train.py (`python train.py --help`); a train.py flag TRL has no place for is refused, not ignored;
       --vllm colocate | server generates with vLLM (CUDA, its own environment: README "Scaling out").
Outputs: out_dir/ (TRL's trainer_state.json with every logged step, checkpoints every --ckpt_every steps), the final
       policy in out_dir/final (a save_pretrained folder: `python eval.py --policy out_dir/final --data ...`).

How train.py's settings map onto GRPOConfig (train.py → TRL):
  group_size G → num_generations;  prompts_per_step B → B·G completions per optimiser step over all processes
  (per_device_train_batch_size = B·G / processes, one optimiser step per generation batch, as train.py);
  ppo_epochs μ → num_iterations;  clip_low / clip_high → epsilon / epsilon_high;  kl_coef β → beta;
  loss_agg seq-mean-token-mean → loss_type "grpo", token-mean → "dapo";  max_new_tokens → max_completion_length;
  lr, warmup_steps → learning_rate, warmup_steps, constant after warm-up (HF warms up from 0, train.py from
  lr / warmup_steps);  AdamW without weight decay;
  special tokens other than EOS are never sampled (as train.py's sampler).
"""

import os
import sys
import time
from dataclasses import asdict

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
import torch  # noqa: E402
from accelerate import PartialState  # noqa: E402
from datasets import Dataset  # noqa: E402
from trl import GRPOConfig  # noqa: E402

import train  # noqa: E402
from engines.trl_rtt import RTTConfig, RTTGRPOTrainer, RubricReward  # noqa: E402
from policies.loading import load_for_training, load_policy, pick_device, pick_dtype  # noqa: E402
from policies.rollout import encode_prompts, suppressed_token_mask  # noqa: E402
from relevance.build import discriminator_for  # noqa: E402
from runs.files import write_json  # noqa: E402
from tasks import registry  # noqa: E402

# train.py flags with no place in TRL's trainer: refused when they differ from the preset's value
NOT_IN_TRL = {"max_batch_tokens": "TRL bounds memory with per_device_train_batch_size and gradient checkpointing",
              "eval_every": "evaluate a saved policy with eval.py", "eval_samples": "evaluate with eval.py",
              "eval_prompts": "evaluate with eval.py", "sample_every": "TRL logs completions (log_completions)",
              "final_eval": "evaluate out_dir/final with eval.py", "overwrite": "TRL writes into out_dir"}


VLLM_MODES = ("off", "colocate", "server")


def parse(argv: list[str]) -> tuple[train.Config, str]:
    """(train.py's config, vLLM mode): train.py's parser and presets plus --vllm off | colocate | server (generation
    by vLLM in this process, or by `trl vllm-serve` on other GPUs), then the refusals of what TRL cannot take."""
    vllm = "off"
    if "--vllm" in argv:
        at = argv.index("--vllm")
        vllm = argv[at + 1] if at + 1 < len(argv) else ""
        argv = argv[:at] + argv[at + 2:]
    if vllm not in VLLM_MODES:
        raise SystemExit(f"--vllm {vllm!r} is not one of {', '.join(VLLM_MODES)}")
    if "-h" in argv or "--help" in argv:
        print("usage: python engines/train_trl.py [toy | smollm2 | paper] [--flag value ...] [--vllm MODE]")
        print(__doc__)
        print("Every train.py flag (python train.py --help), and --vllm off | colocate | server.")
        raise SystemExit(0)
    cfg = train.parse_config(argv)
    preset = train.parse_config([cfg.preset])
    for name, reason in NOT_IN_TRL.items():
        if getattr(cfg, name) != getattr(preset, name):
            raise SystemExit(f"--{name} has no place in the TRL trainer: {reason}")
    if cfg.relevance == "oracle" or cfg.norm == "released_code":
        raise SystemExit("--relevance oracle and --norm released_code are train.py's (Rubric World's labels, the "
                         "authors' pipeline); the TRL trainer takes discriminator | uniform | random and "
                         f"{' | '.join(train.TOKEN_NORMS)}")
    if cfg.dtype == "bfloat16" and pick_device(cfg.device).type == "cpu":
        raise SystemExit("--dtype bfloat16 on a CPU: TRL's bf16 mixed precision needs a GPU (train.py runs bf16 on "
                         "a CPU)")
    if vllm != "off" and pick_device(cfg.device).type != "cuda":
        raise SystemExit("--vllm needs CUDA GPUs and its own environment (README \"Scaling out\")")
    return cfg, vllm


def grpo_config(cfg: train.Config, processes: int, device: torch.device, vllm: str) -> GRPOConfig:
    completions = cfg.prompts_per_step * cfg.group_size
    if completions % processes:
        raise SystemExit(f"B·G = {completions} completions per step do not split over {processes} processes")
    return GRPOConfig(
        output_dir=cfg.out_dir, seed=cfg.seed, max_steps=cfg.max_steps, use_cpu=device.type == "cpu",
        bf16=pick_dtype(cfg.dtype, str(device)) == torch.bfloat16,               # as train.py reads --dtype
        num_generations=cfg.group_size, per_device_train_batch_size=completions // processes,
        gradient_accumulation_steps=1, steps_per_generation=1, num_iterations=cfg.ppo_epochs,
        learning_rate=cfg.lr, warmup_steps=cfg.warmup_steps, lr_scheduler_type="constant_with_warmup",
        weight_decay=0.0, max_grad_norm=cfg.max_grad_norm, epsilon=cfg.clip_low, epsilon_high=cfg.clip_high,
        beta=cfg.kl_coef, loss_type={"seq-mean-token-mean": "grpo", "token-mean": "dapo"}[cfg.loss_agg],
        max_completion_length=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
        gradient_checkpointing=cfg.gradient_checkpointing, save_strategy="steps", save_steps=cfg.ckpt_every,
        logging_steps=1, report_to=["wandb"] if cfg.wandb_project else [], disable_tqdm=False,
        use_vllm=vllm != "off", vllm_mode=vllm if vllm != "off" else "colocate")


def prompt_rows(items: list[dict], tokenizer) -> Dataset:
    """TRL's dataset: a chat message where the tokenizer has a chat template, else the toy format as text
    ("<bos> words <sep>"); checked to give the token ids train.py's encode_prompts gives."""
    chat = bool(getattr(tokenizer, "chat_template", None))
    texts = [[{"role": "user", "content": item["prompt"]}] if chat else
             f"{tokenizer.bos_token} {item['prompt']} {tokenizer.sep_token}" for item in items]
    rows = [{"prompt": text, "item": i} for i, text in enumerate(texts)]
    for row, expected in zip(rows[:8], encode_prompts(tokenizer, items[:8])):
        ids = (tokenizer.apply_chat_template(row["prompt"], tokenize=True, add_generation_prompt=True,
                                             return_dict=False) if chat else tokenizer(text=row["prompt"])["input_ids"])
        if list(ids) != list(expected):
            raise SystemExit("the TRL prompt does not tokenize as train.py's prompt; this tokenizer needs a chat "
                             "template or the toy format")
    return Dataset.from_list(rows)


def build_trainer(cfg: train.Config, vllm: str = "off", callbacks: tuple = ()) -> RTTGRPOTrainer:
    """The RTT trainer of a run: task, policy, judge and relevance as train.py loads them, settings in GRPOConfig.
    With --lam 0 it is TRL's GRPO exactly (RTTGRPOTrainer leaves TRL's advantages untouched)."""
    device = pick_device(cfg.device)
    processes = PartialState(cpu=device.type == "cpu").num_processes            # torchrun / accelerate launch
    if cfg.wandb_project:
        os.environ["WANDB_PROJECT"] = cfg.wandb_project
    splits = train.load(lambda: registry.load_splits(cfg.data))
    model, tokenizer, _ = train.load(lambda: load_for_training(cfg.policy, "cpu", "float32",
                                                               cfg.gradient_checkpointing))
    suppressed = suppressed_token_mask(tokenizer, model.config.vocab_size).nonzero().flatten().tolist()
    args = grpo_config(cfg, processes, device, vllm)
    if suppressed and vllm == "off":                     # vLLM takes no suppress_tokens: it may sample special tokens
        args.generation_kwargs = {"suppress_tokens": suppressed}
    judge_llm = train.load(lambda: load_policy(cfg.judge_model, str(device), cfg.dtype)) if cfg.judge_model else None
    judge = train.load(lambda: registry.make_judge(cfg.judge, judge_llm))
    uses_discriminator = cfg.lam > 0 and cfg.relevance == "discriminator"
    discriminator = train.load(lambda: discriminator_for(cfg.policy, cfg.data, tokenizer, "cpu", cfg.discriminator)
                               ) if uses_discriminator else None
    rtt = RTTConfig(lam=cfg.lam, method=cfg.method, norm=cfg.norm,
                    relevance=cfg.relevance if cfg.lam > 0 else "uniform",            # λ = 0: GRPO, w is never read
                    relevance_threshold=cfg.relevance_threshold, eos_token_advantage=cfg.eos_token_advantage,
                    eps=cfg.eps, relevance_seed=cfg.seed)
    reward = RubricReward(judge, splits["train"], cfg.reward)
    return RTTGRPOTrainer(model=model, args=args, rubric_reward=reward, rtt=rtt, discriminator=discriminator,
                          train_dataset=prompt_rows(splits["train"], tokenizer), processing_class=tokenizer,
                          callbacks=list(callbacks))


def main(argv: list[str]) -> dict:
    cfg, vllm = parse(argv)
    start = time.time()
    trainer = build_trainer(cfg, vllm)
    processes = trainer.accelerator.num_processes
    trainer.train(resume_from_checkpoint=cfg.resume or None)
    final_dir = os.path.join(cfg.out_dir, "final")
    trainer.save_model(final_dir)
    rewards = [entry["reward"] for entry in trainer.state.log_history if "reward" in entry]
    summary = {"config": asdict(cfg), "processes": processes, "steps": trainer.state.global_step,
               "reward_first_10": sum(rewards[:10]) / max(len(rewards[:10]), 1),
               "reward_last_10": sum(rewards[-10:]) / max(len(rewards[-10:]), 1),
               "wall_seconds": round(time.time() - start, 1), "final_policy": final_dir}
    if trainer.accelerator.is_main_process:
        write_json(os.path.join(cfg.out_dir, "summary.json"), summary)
        print(f"\n{summary['steps']} steps on {processes} process(es) in {summary['wall_seconds']:.0f} s; mean reward "
              f"{summary['reward_first_10']:.3f} (first 10 steps) -> {summary['reward_last_10']:.3f} (last 10)\n"
              f"policy: {final_dir}   evaluate: python eval.py --policy {final_dir} --data {cfg.data}")
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
