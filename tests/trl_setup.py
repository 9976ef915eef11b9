"""A tiny RTT-in-TRL setup for the tests: a 2-layer chat Llama, prompts with two rubrics a random policy meets about
half the time, a rule judge, and GRPOConfig for a CPU. Shared by tests/test_trl_rtt.py and the two-process script."""

import torch
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from engines.trl_rtt import RTTConfig, RTTGRPOTrainer, RubricReward
from rewards import RuleJudge
from tiny_models import build_tiny_chat_model

CHECKERS = {"has_vowel": lambda response: any(v in response for v in "aeiou"),
            "even_length": lambda response: len(response) % 2 == 0,
            "never": lambda response: False}


def make_items(n_prompts: int = 8, rubrics: tuple[str, ...] = ("has_vowel", "even_length")) -> list[dict]:
    return [{"id": f"q{i}", "prompt": f"Write about the sea, part {i}.",
             "rubrics": [{"type": kind, "args": {}, "description": f"The response passes {kind}."}
                         for kind in rubrics]} for i in range(n_prompts)]


def dataset(items: list[dict]) -> Dataset:
    return Dataset.from_list([{"prompt": [{"role": "user", "content": item["prompt"]}], "item": i}
                              for i, item in enumerate(items)])


def grpo_config(out_dir, **overrides) -> GRPOConfig:
    settings = dict(output_dir=str(out_dir), use_cpu=True, bf16=False, report_to=[], save_strategy="no",
                    per_device_train_batch_size=8, num_generations=4, max_completion_length=8, max_steps=2,
                    learning_rate=1e-2, logging_steps=1, seed=0, disable_tqdm=True)
    return GRPOConfig(**{**settings, **overrides})


def run(out_dir, items: list[dict], rtt: RTTConfig | None, discriminator=None, **config) -> tuple[dict, object]:
    """Train the tiny policy (seed 5) with TRL's GRPOTrainer (rtt None) or RTTGRPOTrainer; (final weights, trainer)."""
    model, tokenizer = build_tiny_chat_model("llama", seed=5)
    reward = RubricReward(RuleJudge(CHECKERS), items)
    common = dict(args=grpo_config(out_dir, **config), train_dataset=dataset(items), processing_class=tokenizer)
    if rtt is None:
        trainer = GRPOTrainer(model=model, reward_funcs=[reward], **common)
    else:
        trainer = RTTGRPOTrainer(model=model, rubric_reward=reward, rtt=rtt, discriminator=discriminator, **common)
    trainer.train()
    return {name: value.detach().clone() for name, value in model.state_dict().items()}, trainer


def same_weights(a: dict, b: dict) -> bool:
    return all(torch.equal(a[name], b[name]) for name in a)
