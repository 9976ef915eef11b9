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
