"""Tiny local chat models for the tests: a 2-layer Llama or Qwen2 with a byte-level BPE tokenizer trained here on a
few sentences, carrying that family's special tokens and chat template, so every real-model code path runs with no
download."""

import json

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from policies.loading import use_chat_eos


CHAT_STYLES = {
    # Qwen2 / SmolLM2 style ChatML. eos in the config is <|endoftext|>; turns end with <|im_end|>.
    "qwen2": {"specials": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "bos": None, "eos": "<|endoftext|>",
              "pad": "<|endoftext|>",
              "template": ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                           "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")},
    # Llama 3 style. eos in the config is <|end_of_text|>; turns end with <|eot_id|>; no pad token.
    "llama": {"specials": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                           "<|eot_id|>"], "bos": "<|begin_of_text|>", "eos": "<|end_of_text|>", "pad": None,
              "template": ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>"
                           "\n\n{{ m['content'] }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}"
                           "<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")},
}
TINY_CORPUS = ("Write a short text about the sea. Start with the word boat. Do not use commas. "
               "Answer in lowercase letters only. The old boat sails near the quiet harbour at night. "
               "List three facts, then end with the phrase Is there anything else I can help with?")


def build_tiny_chat_tokenizer(style: str) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on a few sentences, with the style's special tokens and chat template."""
    if style not in CHAT_STYLES:
        raise ValueError(f"unknown chat style {style!r}; choose one of {sorted(CHAT_STYLES)}")
    spec = CHAT_STYLES[style]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=spec["specials"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator([TINY_CORPUS], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=spec["bos"], eos_token=spec["eos"],
                                        pad_token=spec["pad"])
    tokenizer.chat_template = spec["template"]
    return tokenizer


def build_tiny_chat_model(family: str, seed: int = 0, hidden: int = 32, layers: int = 2, max_positions: int = 512):
    """(model, tokenizer): a randomly initialised 2-layer Llama or Qwen2 with its family's chat tokenizer."""
    tokenizer = build_tiny_chat_tokenizer(family)
    arch = dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions, tie_word_embeddings=True,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.bos_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**arch)) if family == "llama" else Qwen2ForCausalLM(Qwen2Config(**arch))
    use_chat_eos(model, tokenizer)
    return model.eval(), tokenizer


def write_policy_and_rubrics(tmp_path, n_prompts: int, avoid: str) -> tuple[str, str]:
    """A tiny Llama chat policy directory and a JSONL rubric dataset judged by Rubric World's rule checkers:
    n_prompts prompts, each with "Include 'sea'." and "Avoid '<avoid>'."; returns (policy dir, dataset path)."""
    model, tokenizer = build_tiny_chat_model("llama", seed=5)
    model.save_pretrained(tmp_path / "policy")
    tokenizer.save_pretrained(tmp_path / "policy")
    rows = [{"id": f"q{i}", "prompt": f"Write about the sea, part {i}.", "rubrics": [
        {"type": "include", "args": {"word": "sea"}, "description": "Include 'sea'."},
        {"type": "exclude", "args": {"word": avoid}, "description": f"Avoid '{avoid}'."}]} for i in range(n_prompts)]
    (tmp_path / "rubrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(tmp_path / "policy"), str(tmp_path / "rubrics.jsonl")
