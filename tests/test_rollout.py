"""rollout.py: rollouts (shapes, masks, determinism, greedy), per-token log-probs against a slow loop, decoding;
loading.py: the toy warm start and its cache."""
import json
import math

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from policies import loading, rollout
from policies import toy as toy_policy
from tasks import rubric_world

MAX_NEW = 12


@pytest.fixture(scope="module")
def toy():
    """A random-init toy policy whose EOS logit is raised, so responses end at varied lengths."""
    tokenizer = rubric_world.build_tokenizer()
    model = toy_policy.build_toy_policy(tokenizer, seed=0).eval()
    eos_bias = torch.zeros(len(tokenizer))
    eos_bias[tokenizer.eos_token_id] = 2.0
    model.lm_head.register_forward_hook(lambda module, args, out: out + eos_bias)
    prompts = rubric_world.make_splits(seed=0, n_train=4, n_val=1, n_test=5, n_unseen=1)["test"]
    return model, tokenizer, rollout.encode_prompts(tokenizer, prompts)


def sample(toy, seed=0, group_size=4, **kwargs):
    model, tokenizer, prompt_ids = toy
    return rollout.generate(model, tokenizer, prompt_ids, group_size, MAX_NEW,
                           generator=torch.Generator().manual_seed(seed), **kwargs)


def allowed_logits(model, tokenizer, ids):
    """Next-token logits of ONE unpadded sequence, specials other than EOS removed (the slow reference)."""
    logits = model(input_ids=torch.tensor([ids])).logits[0, -1].float()
    return logits.masked_fill(rollout.suppressed_token_mask(tokenizer, logits.shape[-1]), -math.inf)


def test_generate_shapes_and_mask_semantics(toy):
    model, tokenizer, prompt_ids = toy
    response_ids, token_mask = sample(toy)
    b_size, g_size, t_size = response_ids.shape
    assert (b_size, g_size) == (len(prompt_ids), 4) and t_size <= MAX_NEW and token_mask.shape == response_ids.shape
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    n_ended = 0
    for ids, mask in zip(response_ids.reshape(-1, t_size).tolist(), token_mask.reshape(-1, t_size).tolist()):
        length = sum(mask)
        assert mask == [True] * length + [False] * (t_size - length)             # True on a prefix only
        assert all(i == pad for i in ids[length:])                               # pad after it
        assert eos not in ids[:length - 1]                                       # nothing after an EOS
        if ids[length - 1] == eos:
            n_ended += 1                                                         # EOS is inside the mask
        else:
            assert length == MAX_NEW                                             # no EOS: cut at the cap
    assert 0 < n_ended < b_size * g_size                                         # both cases were exercised
    assert bool(token_mask[..., -1].any())                                       # T is the longest response


def test_same_seed_same_samples_and_another_seed_differs(toy):
    first, second, other = sample(toy, seed=7), sample(toy, seed=7), sample(toy, seed=8)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert first[0].shape != other[0].shape or not torch.equal(first[0], other[0])


def test_greedy_is_the_argmax_of_a_one_sequence_forward(toy):
    model, tokenizer, prompt_ids = toy
    response_ids, token_mask = sample(toy, group_size=2, greedy=True)
    assert torch.equal(response_ids[:, 0], response_ids[:, 1])                   # greedy copies are identical
    for b, prompt in enumerate(prompt_ids):
        response = response_ids[b, 0][token_mask[b, 0]].tolist()
        for t, token in enumerate(response):
            assert int(allowed_logits(model, tokenizer, prompt + response[:t]).argmax()) == token


def test_sampling_never_emits_suppressed_special_tokens(toy):
    model, tokenizer, prompt_ids = toy
    suppressed = rollout.suppressed_token_mask(tokenizer, len(tokenizer))
    assert set(suppressed.nonzero().flatten().tolist()) == {tokenizer.pad_token_id, tokenizer.bos_token_id,
                                                           tokenizer.unk_token_id, tokenizer.sep_token_id}
    boost = suppressed.float() * 20.0                                             # specials would win every draw
    handle = model.lm_head.register_forward_hook(lambda module, args, out: out + boost)
    try:
        response_ids, token_mask = sample(toy, group_size=8)
    finally:
        handle.remove()
    assert not bool(suppressed[response_ids[token_mask]].any())


def test_top_k_1_and_tiny_top_p_are_greedy():
    logits = torch.randn(6, 10, generator=torch.Generator().manual_seed(0))
    greedy = rollout.sample_next(logits, greedy=True)
    assert torch.equal(rollout.sample_next(logits, top_k=1, generator=torch.Generator().manual_seed(1)), greedy)
    assert torch.equal(rollout.sample_next(logits, top_p=1e-6, generator=torch.Generator().manual_seed(1)), greedy)
    with pytest.raises(ValueError, match="temperature"):
        rollout.sample_next(logits, temperature=0.0)


def hf_warped_probs(logits, temperature, top_k, top_p):
    """The reference: transformers' own warpers, in generate's order, then softmax. (N, V) -> (N, V)."""
    from transformers.generation.logits_process import (TemperatureLogitsWarper, TopKLogitsWarper,
                                                        TopPLogitsWarper)
    scores = TemperatureLogitsWarper(temperature)(None, logits.clone())
    if top_k > 0:
        scores = TopKLogitsWarper(top_k)(None, scores)
    if top_p < 1.0:
        scores = TopPLogitsWarper(top_p)(None, scores)
    return scores.softmax(dim=-1)


@pytest.mark.parametrize("top_k, top_p", [(0, 1.0), (0, 0.9), (20, 1.0), (20, 0.9), (20, 0.5), (1, 1.0), (300, 0.8)])
def test_the_candidates_carry_the_distribution_of_transformers_warpers(top_k, top_p):
    logits = 3 * torch.randn(6, 300, generator=torch.Generator().manual_seed(top_k))
    logits[:, 7] = -math.inf                                                       # a suppressed token
    candidate_logits, candidate_ids = rollout.warped_candidates(logits, 0.7, top_k, top_p)   # (N, C)
    ours = torch.zeros_like(logits).scatter(-1, candidate_ids, candidate_logits.softmax(dim=-1))  # (N, V)
    torch.testing.assert_close(ours, hf_warped_probs(logits, 0.7, top_k, top_p), atol=1e-6, rtol=1e-5)
    assert candidate_ids.shape[-1] == (top_k if 0 < top_k < 300 else 300)         # top-k: k candidates, not V


def full_vocabulary_sampler(logits, temperature, top_p, generator):
    """The sampler before top-k had its own path: mask the (N, V) logits, draw over all V. The reference for
    top_k = 0, whose draws must not have changed."""
    scaled = logits.float() / temperature
    if top_p < 1.0:
        sorted_logits, order = scaled.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = (cum - sorted_logits.softmax(dim=-1)) >= top_p
        scaled = scaled.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), -math.inf)
    return torch.multinomial(scaled.softmax(dim=-1), 1, generator=generator).squeeze(-1)


@pytest.mark.parametrize("top_p", [1.0, 0.9])
def test_without_top_k_a_seed_draws_the_tokens_it_drew_before(top_p):
    logits = 2 * torch.randn(64, 500, generator=torch.Generator().manual_seed(3))
    for seed in range(5):
        ours = rollout.sample_next(logits, 0.8, 0, top_p, generator=torch.Generator().manual_seed(seed))
        before = full_vocabulary_sampler(logits, 0.8, top_p, torch.Generator().manual_seed(seed))
        assert torch.equal(ours, before)


def test_top_k_draws_follow_the_warped_distribution():
    """The draw among the k candidates, mapped back to vocabulary ids, has the frequencies of HF's distribution."""
    logits = torch.randn(1, 50, generator=torch.Generator().manual_seed(0)).expand(20000, 50)
    draws = rollout.sample_next(logits, 1.0, 5, 0.8, generator=torch.Generator().manual_seed(0))  # (20000,)
    frequency = torch.bincount(draws, minlength=50).float() / len(draws)
    expected = hf_warped_probs(logits[:1], 1.0, 5, 0.8)[0]
    assert set(draws.unique().tolist()) == set(expected.nonzero().flatten().tolist())
    assert (frequency - expected).abs().max() < 0.015                              # 20,000 draws: 3 sigma ~ 0.011


def growing_cache_generate(model, tokenizer, prompt_ids, group_size, max_new_tokens, top_p, generator):
    """The sampling loop before the static cache and top-k candidates: a cache that grows by concatenation, the
    mask rebuilt every step, the full-vocabulary sampler. The reference for samples that must not have changed."""
    input_ids, attention_mask = rollout.left_pad(prompt_ids, tokenizer.pad_token_id)
    position_ids = rollout.positions(attention_mask)
    out = model(input_ids=input_ids, attention_mask=attention_mask.long(), position_ids=position_ids,
                use_cache=True, logits_to_keep=1)
    cache = out.past_key_values
    cache.batch_repeat_interleave(group_size)
    logits = out.logits[:, -1].repeat_interleave(group_size, dim=0)
    attention_mask = attention_mask.repeat_interleave(group_size, dim=0)
    position_ids = position_ids[:, -1:].repeat_interleave(group_size, dim=0)
    suppress = rollout.suppressed_token_mask(tokenizer, model.config.vocab_size)
    rows = []
    finished = torch.zeros(len(prompt_ids) * group_size, dtype=torch.bool)
    for _ in range(max_new_tokens):
        next_ids = full_vocabulary_sampler(logits.float().masked_fill(suppress, -math.inf), 1.0, top_p, generator)
        rows.append(next_ids.masked_fill(finished, tokenizer.pad_token_id))
        finished = finished | (next_ids == tokenizer.eos_token_id)
        if bool(finished.all()):
            break
        position_ids = position_ids + 1
        attention_mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], dim=1)
        out = model(input_ids=next_ids[:, None], attention_mask=attention_mask.long(), position_ids=position_ids,
                    past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        logits = out.logits[:, -1]
    return torch.stack(rows, dim=-1).reshape(len(prompt_ids), group_size, -1)   # (B, G, T)


@pytest.mark.parametrize("top_p, autocast", [(1.0, False), (0.9, False), (1.0, True)])
def test_the_toy_samples_what_the_growing_cache_loop_sampled(toy, top_p, autocast):
    """Without top-k (the toy's decoding) the static cache and the sampler's new path change no sampled token; under
    bf16 autocast (train.py's amp on a GPU: float32 keys after rotary, bf16 values) generation runs as before."""
    model, tokenizer, prompt_ids = toy
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        before = growing_cache_generate(model, tokenizer, prompt_ids, 8, MAX_NEW, top_p, torch.Generator().manual_seed(5))
        response_ids, _ = sample(toy, seed=5, group_size=8, top_p=top_p)
    assert response_ids.shape[-1] > 3 and torch.equal(response_ids, before[..., :response_ids.shape[-1]])


@pytest.mark.parametrize("suppress", [True, False])
def test_response_logprobs_equal_a_slow_per_sequence_loop(toy, suppress):
    model, tokenizer, prompt_ids = toy
    response_ids, token_mask = sample(toy, seed=3)                               # (B, G, T), prompts of varied length
    assert len({len(p) for p in prompt_ids}) > 1                                 # so left padding really happens
    logp = rollout.response_logprobs(model, prompt_ids, response_ids, token_mask, tokenizer if suppress else None)
    assert logp.shape == response_ids.shape and logp.dtype == torch.float32
    assert bool((logp[~token_mask] == 0).all())
    with torch.no_grad():
        for b, prompt in enumerate(prompt_ids):
            for g in range(response_ids.shape[1]):
                response = response_ids[b, g][token_mask[b, g]].tolist()
                logits = model(input_ids=torch.tensor([prompt + response])).logits[0].float()  # (P+T, V)
                if suppress:
                    logits = logits.masked_fill(rollout.suppressed_token_mask(tokenizer, logits.shape[-1]), -math.inf)
                slow = logits[len(prompt) - 1:-1].log_softmax(-1)[torch.arange(len(response)), response]
                torch.testing.assert_close(logp[b, g, :len(response)], slow, atol=2e-5, rtol=1e-5)


def test_response_logprobs_do_not_depend_on_batch_neighbours(toy):
    """A much longer prompt in the batch adds left padding to every other row: results must not move."""
    model, tokenizer, prompt_ids = toy
    response_ids, token_mask = sample(toy, seed=4, group_size=1)
    flat_ids, flat_mask = response_ids[:, 0], token_mask[:, 0]                    # (N, T)
    alone = rollout.response_logprobs(model, prompt_ids, flat_ids, flat_mask, tokenizer)
    long_prompt = prompt_ids[0] * 3
    padded = rollout.response_logprobs(model, prompt_ids + [long_prompt], torch.cat([flat_ids, flat_ids[:1]]),
                                      torch.cat([flat_mask, flat_mask[:1]]), tokenizer)
    torch.testing.assert_close(padded[:-1], alone, atol=2e-5, rtol=1e-5)


def test_response_logprobs_reject_bad_masks(toy):
    model, tokenizer, prompt_ids = toy
    ids = torch.zeros(len(prompt_ids), 3, dtype=torch.long)
    with pytest.raises(ValueError, match="token_mask must be bool"):
        rollout.response_logprobs(model, prompt_ids, ids, torch.ones(len(prompt_ids), 3))
    with pytest.raises(ValueError, match="N = len"):
        rollout.response_logprobs(model, prompt_ids[:2], ids, torch.ones(len(prompt_ids), 3, dtype=torch.bool))


# ----------------------------------------------------------------------------- decoding
def padded_batch(tokenizer, rows):
    """(B, G, T) ids and mask from token-id lists (EOS included where a row ends)."""
    t_size = max(len(ids) for group in rows for ids in group)
    response_ids = torch.full((len(rows), len(rows[0]), t_size), tokenizer.pad_token_id)
    token_mask = torch.zeros(response_ids.shape, dtype=torch.bool)
    for b, group in enumerate(rows):
        for g, ids in enumerate(group):
            response_ids[b, g, :len(ids)] = torch.tensor(ids)
            token_mask[b, g, :len(ids)] = True
    return response_ids, token_mask


def test_decode_responses_toy_tokenizer_gives_the_words_joined_by_spaces():
    tokenizer = rubric_world.build_tokenizer()
    texts = [["boat ; Anna 3 .", "the very moon"], ["salt", "very moss"]]
    rows = [[tokenizer.convert_tokens_to_ids(t.split()) + [tokenizer.eos_token_id] for t in texts[0]],
            [tokenizer.convert_tokens_to_ids(["salt"]), tokenizer.convert_tokens_to_ids(["very", "moss"])]]  # no EOS
    response_ids, token_mask = padded_batch(tokenizer, rows)
    assert rollout.decode_responses(tokenizer, response_ids, token_mask) == texts
    token_mask[0, 1, 1:] = False                                                 # masked tokens are dropped
    assert rollout.decode_responses(tokenizer, response_ids, token_mask)[0][1] == "the"


def byte_level_bpe_tokenizer():
    """A GPT-2 style byte-level BPE tokenizer trained here on a few sentences (no download)."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    corpus = ["The boat sails; Anna said: \"don't\" 3 times.", "the quick brown fox jumps over the lazy dog"] * 10
    backend.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<pad>"],
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<pad>")


def test_decode_responses_round_trips_a_bpe_tokenizer():
    tokenizer = byte_level_bpe_tokenizer()
    texts = ["The boat sails; Anna said: \"don't\" 3 times.", " the lazy  dog ."]
    rows = [[tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t in texts]]
    assert any(len(ids) < len(t.split()) + 1 or "Ġ" in "".join(tokenizer.convert_ids_to_tokens(ids))
               for ids, t in zip(rows[0], texts))                                # pieces are not words
    assert rollout.decode_responses(tokenizer, *padded_batch(tokenizer, rows)) == [texts]


# ----------------------------------------------------------------------------- warm start and cache
def test_sft_batch_trains_on_the_response_and_eos_only():
    tokenizer = rubric_world.build_tokenizer()
    prompt_ids = [[1, 50, 60, 4], [1, 70, 4]]
    input_ids, labels = toy_policy.sft_batch(tokenizer, prompt_ids, [["boat", "moon"], ["salt"]])
    boat, moon, salt = tokenizer.convert_tokens_to_ids(["boat", "moon", "salt"])
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    assert input_ids.tolist() == [[1, 50, 60, 4, boat, moon, eos], [1, 70, 4, salt, eos, pad, pad]]
    assert labels.tolist() == [[-100] * 4 + [boat, moon, eos], [-100] * 3 + [salt, eos, -100, -100]]


def test_warm_start_is_cached_and_rebuilt_when_the_recipe_changes(tmp_path):
    recipe = {"steps": 2, "batch_size": 4}
    model, tokenizer = toy_policy.load_or_build_toy_policy(cache_dir=str(tmp_path), recipe=recipe)
    info = json.loads((tmp_path / "build_info.json").read_text())
    assert info["recipe"]["steps"] == 2 and info["recipe"]["arch"] == toy_policy.TOY_ARCH
    again, _ = toy_policy.load_or_build_toy_policy(cache_dir=str(tmp_path), recipe=recipe)
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    toy_policy.load_or_build_toy_policy(cache_dir=str(tmp_path), recipe={**recipe, "steps": 1})
    assert json.loads((tmp_path / "build_info.json").read_text())["recipe"]["steps"] == 1
    with pytest.raises(ValueError, match="cannot load a policy"):
        loading.load_policy(str(tmp_path / "missing"))


def test_saving_the_policy_leaves_the_rest_of_the_cache_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("RTT_CACHE", str(tmp_path))
    assert toy_policy.default_cache_dir() == str(tmp_path / "toy" / "policy")
    sibling = tmp_path / "toy" / "discriminator"
    sibling.mkdir(parents=True)
    (sibling / "weights").write_text("kept")
    tokenizer = rubric_world.build_tokenizer()
    toy_policy.save_policy(toy_policy.build_toy_policy(tokenizer), tokenizer, toy_policy.default_cache_dir())
    toy_policy.save_policy(toy_policy.build_toy_policy(tokenizer), tokenizer, toy_policy.default_cache_dir())   # replaced
    assert (sibling / "weights").read_text() == "kept"
    assert loading.load_policy(toy_policy.default_cache_dir())[0].config.vocab_size == len(tokenizer)
