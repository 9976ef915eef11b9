"""discriminator.py: batched relevance against a one-pair-at-a-time loop, diff labels, metrics, training."""


import random
import re

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForTokenClassification, PreTrainedTokenizerFast, Qwen2Config

import discriminator as disc
from tasks import rubric_world
from relevance import rubric_world_labels


@pytest.fixture(scope="module")
def tokenizer():
    return rubric_world.build_tokenizer()


@pytest.fixture(scope="module")
def models_by_backbone(tokenizer):
    models = {b: disc.build_toy_discriminator(tokenizer, backbone=b, hidden=16, layers=1, heads=2, seed=1).eval()
              for b in ("causal", "bidirectional")}
    models["word_match"] = disc.build_toy_discriminator(tokenizer, hidden=16, layers=1, heads=2, seed=1,
                                                        word_match=True).eval()
    with torch.no_grad():                     # token type 1 must change the output for the tests below to see it
        models["word_match"].bert.embeddings.token_type_embeddings.weight[1].normal_()
    return models


@pytest.fixture(scope="module")
def batch(tokenizer):
    """B = 2 prompts with 3 and 2 rubrics, G = 3 ragged responses (one empty), T = 7."""
    prompts = [rubric_world.make_prompt(random.Random(s), f"p{s}") for s in range(40)]
    prompts = [p for p in prompts if p is not None]
    prompts = [next(p for p in prompts if len(p["rubrics"]) == 3), next(p for p in prompts if len(p["rubrics"]) == 4)]
    prompts[1] = dict(prompts[1], rubrics=prompts[1]["rubrics"][:2])
    lengths = torch.tensor([[7, 3, 0], [1, 5, 6]])                               # (B, G)
    token_mask = torch.arange(7) < lengths[..., None]                            # (B, G, T)
    ids = torch.randint(5, len(tokenizer), (2, 3, 7), generator=torch.Generator().manual_seed(0))  # (B, G, T)
    response_ids = ids.masked_fill(~token_mask, tokenizer.pad_token_id)          # (B, G, T)
    return prompts, response_ids, token_mask


def slow_relevance(model, tokenizer, prompts, response_ids, token_mask):
    """One (response, rubric) pair at a time, unpadded and unbatched."""
    b_size, g_size, t_size = response_ids.shape
    out = torch.zeros(b_size, g_size, max(len(p["rubrics"]) for p in prompts), t_size)
    for b, prompt in enumerate(prompts):
        for g in range(g_size):
            response = response_ids[b, g][token_mask[b, g]].tolist()
            for k, rubric in enumerate(prompt["rubrics"]):
                if not response:
                    continue
                prefix = disc.prefix_ids(tokenizer, rubric["description"])
                extra = {}
                if disc.reads_word_match(model):
                    marks = disc.word_match_marks(tokenizer, rubric["description"], response)
                    extra["token_type_ids"] = torch.tensor([[0] * len(prefix) + marks])
                with torch.no_grad():
                    logits = model(input_ids=torch.tensor([prefix + response]), **extra).logits[0, :, 0]
                out[b, g, k, :len(response)] = torch.sigmoid(logits[len(prefix):])
    return out


@pytest.mark.parametrize("backbone", ["causal", "bidirectional", "word_match"])
def test_batched_relevance_equals_one_pair_at_a_time(models_by_backbone, tokenizer, batch, backbone):
    model = models_by_backbone[backbone]
    weights = disc.relevance(model, tokenizer, *batch)
    assert weights.shape == (2, 3, 3, 7) and weights.dtype == torch.float32
    torch.testing.assert_close(weights, slow_relevance(model, tokenizer, *batch), atol=2e-6, rtol=1e-5)


def test_chunking_does_not_change_relevance(models_by_backbone, tokenizer, batch):
    model = models_by_backbone["bidirectional"]
    reference = disc.relevance(model, tokenizer, *batch)
    for budget in (1, 40, 97, 1000):
        torch.testing.assert_close(disc.relevance(model, tokenizer, *batch, max_tokens_per_batch=budget), reference,
                                   atol=2e-6, rtol=1e-5)


def test_padding_and_padded_rubrics_are_zero_and_weights_are_probabilities(models_by_backbone, tokenizer, batch):
    prompts, response_ids, token_mask = batch
    rubric_mask = torch.tensor([[True, True, True], [True, True, False]])        # (B, K): prompt 1 has 2 rubrics
    valid = token_mask[:, :, None, :] & rubric_mask[:, None, :, None]            # (B, G, K, T)
    model = models_by_backbone["causal"]
    for fn in (lambda *inputs: disc.relevance(model, tokenizer, *inputs), disc.uniform_relevance,
               lambda *inputs: disc.random_relevance(*inputs, generator=torch.Generator().manual_seed(0))):
        weights = fn(prompts, response_ids, token_mask)                          # (B, G, K, T)
        assert weights.shape == valid.shape and weights.dtype == torch.float32
        assert torch.all(weights[~valid] == 0) and torch.all((weights[valid] > 0) & (weights[valid] <= 1))
    assert torch.all(weights[0, 2] == 0)                                         # the empty response: a zero row


def test_random_relevance_follows_its_generator_and_another_tokenizer_is_refused(tokenizer, batch):
    random_a = disc.random_relevance(*batch, generator=torch.Generator().manual_seed(3))
    assert torch.equal(random_a, disc.random_relevance(*batch, generator=torch.Generator().manual_seed(3)))
    assert not torch.equal(random_a, disc.random_relevance(*batch, generator=torch.Generator().manual_seed(4)))
    disc.check_same_tokenizer(tokenizer, tokenizer)
    with pytest.raises(ValueError, match="tokenizer differs"):
        disc.check_same_tokenizer(tokenizer, bpe_tokenizer())


def test_bad_relevance_inputs_give_clear_errors(models_by_backbone, tokenizer, batch):
    prompts, response_ids, token_mask = batch
    model = models_by_backbone["causal"]
    empty = [dict(prompts[0], rubrics=[dict(prompts[0]["rubrics"][0], description=" ")]), prompts[1]]
    with pytest.raises(ValueError, match="empty rubric description"):
        disc.relevance(model, tokenizer, empty, response_ids, token_mask)
    with pytest.raises(ValueError, match="same shape"):
        disc.relevance(model, tokenizer, prompts, response_ids, token_mask[..., :-1])
    with pytest.raises(ValueError, match="must be bool"):
        disc.relevance(model, tokenizer, prompts, response_ids, token_mask.long())
    with pytest.raises(ValueError, match="right-padded"):
        disc.relevance(model, tokenizer, prompts, response_ids, token_mask.flip(-1))
    with pytest.raises(ValueError, match="2 prompts but"):
        disc.relevance(model, tokenizer, prompts, response_ids[:1], token_mask[:1])
    with pytest.raises(ValueError, match="has no rubrics"):
        disc.relevance(model, tokenizer, [dict(prompts[0], rubrics=[]), prompts[1]], response_ids, token_mask)


def test_token_diff_labels_examples():
    assert disc.token_diff_labels([5, 6, 7, 2], [5, 9, 7, 2]) == ([0, 1, 0, 0], [0, 1, 0, 0])
    assert disc.token_diff_labels([5, 6, 7, 2], [5, 6, 2]) == ([0, 0, 1, 0], [0, 0, 1])      # deletion
    assert disc.token_diff_labels([5, 6, 7], [5, 6]) == ([0, 0, 1], [0, 1])                  # gap at the end
    assert disc.token_diff_labels([7, 1, 8, 2, 9], [7, 2, 8, 1, 9]) == ([0, 1, 0, 1, 0], [0, 1, 0, 1, 0])  # swap
    assert disc.token_diff_labels([], [4]) == ([], [1])


def bpe_tokenizer():
    """A tiny byte-pair-encoding tokenizer trained here (sub-word pieces, so spans cut inside words)."""
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    corpus = ["the boat sails over the waves", "a storm hits the harbour", "boats and sailors sing"] * 20
    backend.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=60, special_tokens=["<pad>", "<unk>", "<eos>"]))
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>")


def byte_level_tokenizer():
    """A tiny byte-level BPE tokenizer (SmolLM2's, Llama 3's and Qwen's kind: a token carries its leading space)."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    corpus = ["the boat sails over the waves", "a storm hits the harbour", "boats and sailors sing"] * 20
    backend.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<eos>"],
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>")


@pytest.mark.parametrize("kind", ["byte-level BPE", "word-level"])
def test_word_match_marks_every_piece_of_a_rubric_word_and_nothing_else(kind, tokenizer):
    """Against a slow reading: token t owns the characters decoding the first t + 1 tokens adds; it is marked iff
    they overlap a word whose lowercase form the rubric's text holds. A word in any case and cut into any pieces is
    marked whole; a longer word containing it ("boats" for "boat"), punctuation and the end of sequence are not."""
    tok = byte_level_tokenizer() if kind == "byte-level BPE" else tokenizer      # Rubric World's word vocabulary
    text = "A Storm hits the kaleidoscope, boats!" if kind == "byte-level BPE" else "river stone river sun"
    ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    rubric = 'Include the keywords "Kaleidoscope", "storm", "boat" and "river".'
    rubric_words = {"include", "the", "keywords", "kaleidoscope", "storm", "boat", "and", "river"}
    ends = [len(tok.decode(ids[:t + 1], skip_special_tokens=True)) for t in range(len(ids))]
    decoded = tok.decode(ids, skip_special_tokens=True)
    spans = [m.span() for m in re.finditer(r"[A-Za-z]+", decoded) if m.group().lower() in rubric_words]
    expected = [int(any(lo < end and start < hi for lo, hi in spans)) for start, end in zip([0] + ends[:-1], ends)]
    marks = disc.word_match_marks(tok, rubric, ids)
    assert marks == expected and marks[-1] == 0
    marked_words = {m.group().lower() for m in re.finditer(r"[A-Za-z]+", decoded) if m.span() in spans}
    assert marked_words == ({"storm", "the", "kaleidoscope"} if kind == "byte-level BPE" else {"river"})
    if kind == "byte-level BPE":
        assert sum(marks) > len(marked_words)                                     # "kaleidoscope" is in pieces


def test_word_match_is_refused_where_it_cannot_be_read_and_survives_save_and_load(models_by_backbone, tokenizer,
                                                                                  batch, tmp_path):
    with pytest.raises(ValueError, match="needs backbone 'bidirectional'"):
        disc.build_toy_discriminator(tokenizer, backbone="causal", word_match=True)
    model = models_by_backbone["word_match"]
    disc.save_discriminator(model, tokenizer, str(tmp_path / "d"))
    loaded, loaded_tokenizer = disc.load_discriminator(str(tmp_path / "d"), policy_tokenizer=tokenizer)
    assert disc.reads_word_match(loaded) and not disc.reads_word_match(models_by_backbone["bidirectional"])
    assert torch.equal(disc.relevance(loaded, loaded_tokenizer, *batch), disc.relevance(model, tokenizer, *batch))


def test_auroc_equals_a_pairwise_count():
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        scores = torch.randint(0, 6, (40,), generator=g).float() / 5              # many ties
        labels = torch.rand(40, generator=g) < 0.3
        pos, neg = scores[labels], scores[~labels]
        pairs = (pos[:, None] > neg[None, :]).double() + 0.5 * (pos[:, None] == neg[None, :]).double()
        assert disc.auroc(scores, labels) == pytest.approx(pairs.mean().item(), abs=1e-12)
    assert disc.auroc(torch.tensor([0.1, 0.2]), torch.tensor([1, 1])) != disc.auroc(torch.tensor([0.1, 0.2]),
                                                                                      torch.tensor([1, 1]))  # NaN


def test_token_metrics_by_hand():
    probs = [torch.tensor([0.9, 0.2, 0.6]), torch.tensor([0.1, 0.8])]
    labels = [[1.0, 0.0, 0.0], [1.0, 0.0]]
    m = disc.token_metrics(probs, labels, violated=[True, True])
    assert (m["precision"], m["recall"], m["f1"]) == pytest.approx((1 / 3, 1 / 2, 0.4))
    assert m["top1_violated"] == 0.5 and m["auroc"] == 0.5                      # 3 of the 6 pairs ordered
    tied = disc.token_metrics([torch.ones(4), torch.tensor([0.2, 0.7, 0.7])], [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0]],
                              violated=[True, True])
    assert tied["top1_violated"] == pytest.approx((1 / 4 + 1 / 2) / 2)          # a tie at the top shares the hit


def test_bce_ignores_everything_but_response_tokens():
    logits = torch.randn(2, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([[1., 0., 0., 0.], [0., 1., 0., 0.]])
    lengths = torch.tensor([2, 4])
    loss = disc.bce_on_response(logits, labels, lengths)
    changed = labels.clone()
    changed[0, 3] = 1.0                                                          # past response 0's length
    assert disc.bce_on_response(logits, changed, lengths) == loss
    changed[1, 3] = 1.0                                                          # inside response 1
    assert disc.bce_on_response(logits, changed, lengths) != loss
    manual = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.cat([logits[0, :2], logits[1]]), torch.cat([labels[0, :2], labels[1]]))
    torch.testing.assert_close(loss, manual)


def test_training_on_a_tiny_set_decreases_the_loss(tokenizer):
    prompts = rubric_world.make_splits(seed=0, n_train=6, n_val=1, n_test=1, n_unseen=1)["train"]
    examples = rubric_world_labels.rubric_world_examples(prompts, tokenizer)
    model = disc.build_toy_discriminator(tokenizer, hidden=32, layers=1, heads=2)
    losses = disc.train_discriminator(model, tokenizer, examples, steps=40, batch_size=16)
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


def test_examples_reject_bad_labels():
    with pytest.raises(ValueError, match="labels length mismatch"):
        disc.make_example("Start with boat.", [4, 5], [1.0])
    with pytest.raises(ValueError, match="empty response"):
        disc.make_example("Start with boat.", [], [])
    with pytest.raises(ValueError, match="empty rubric"):
        disc.make_example("", [4], [1.0])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        disc.make_example("Start with boat.", [4], [2.0])


def test_save_load_round_trip_and_tokenizer_mismatch(models_by_backbone, tokenizer, batch, tmp_path):
    model = models_by_backbone["bidirectional"]
    disc.save_discriminator(model, tokenizer, str(tmp_path / "d"), {"note": 1})
    loaded, loaded_tokenizer = disc.load_discriminator(str(tmp_path / "d"), policy_tokenizer=tokenizer)
    assert torch.equal(disc.relevance(loaded, loaded_tokenizer, *batch), disc.relevance(model, tokenizer, *batch))
    with pytest.raises(ValueError, match="tokenizer differs"):
        disc.load_discriminator(str(tmp_path / "d"), policy_tokenizer=bpe_tokenizer())
    with pytest.raises(ValueError, match="no discriminator checkpoint"):
        disc.load_discriminator(str(tmp_path / "missing"))


def test_a_transformers_causal_lm_backbone_end_to_end(tokenizer, batch, tmp_path):
    """AutoModelForTokenClassification on a Qwen2 config: train, save, load, relevance."""
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    model = AutoModelForTokenClassification.from_config(config)
    prompts = rubric_world.make_splits(seed=0, n_train=4, n_val=1, n_test=1, n_unseen=1)["train"]
    examples = rubric_world_labels.rubric_world_examples(prompts, tokenizer)
    losses = disc.train_discriminator(model, tokenizer, examples, steps=5, batch_size=8)
    assert all(l == l for l in losses)
    disc.save_discriminator(model, tokenizer, str(tmp_path / "qwen"))
    loaded, _ = disc.load_discriminator(str(tmp_path / "qwen"), policy_tokenizer=tokenizer)
    assert type(loaded).__name__ == "Qwen2ForTokenClassification"
    weights = disc.relevance(loaded, tokenizer, *batch)
    torch.testing.assert_close(weights, slow_relevance(loaded, tokenizer, *batch), atol=2e-6, rtol=1e-5)




def test_cached_word_match_marks_give_the_same_inputs(tokenizer, batch):
    """Training shares a marks cache across steps; a batch encoded through it equals one encoded without it."""
    prompts, response_ids, token_mask = batch
    descriptions = [r["description"] for r in prompts[0]["rubrics"]]
    responses = [response_ids[0, 0][token_mask[0, 0]].tolist()] * len(descriptions)
    cache = {}
    for _ in range(2):                                                            # filled, then read
        cached = disc.encode_pairs(tokenizer, descriptions, responses, word_match=True, marks=cache)
        fresh = disc.encode_pairs(tokenizer, descriptions, responses, word_match=True)
        assert torch.equal(cached[4], fresh[4]) and len(cache) == len(set(descriptions))
