"""discriminator.py: batched relevance against a one-pair-at-a-time loop, labels, parsing, metrics, training."""

import json
import random

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import AutoModelForTokenClassification, PreTrainedTokenizerFast, Qwen2Config

import data
import discriminator as disc


@pytest.fixture(scope="module")
def tokenizer():
    return data.build_tokenizer()


@pytest.fixture(scope="module")
def models_by_backbone(tokenizer):
    return {b: disc.build_toy_discriminator(tokenizer, backbone=b, hidden=16, layers=1, heads=2, seed=1).eval()
            for b in ("causal", "bidirectional")}


@pytest.fixture(scope="module")
def batch(tokenizer):
    """B = 2 prompts with 3 and 2 rubrics, G = 3 ragged responses (one empty), T = 7."""
    prompts = [data.make_prompt(random.Random(s), f"p{s}") for s in range(40)]
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
                with torch.no_grad():
                    logits = model(input_ids=torch.tensor([prefix + response])).logits[0, :, 0]
                out[b, g, k, :len(response)] = torch.sigmoid(logits[len(prefix):])
    return out


@pytest.mark.parametrize("backbone", ["causal", "bidirectional"])
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
    for fn in (disc.make_relevance_fn(models_by_backbone["causal"], tokenizer),
               disc.make_relevance_fn(kind="uniform"), disc.make_relevance_fn(kind="random")):
        weights = fn(prompts, response_ids, token_mask)                          # (B, G, K, T)
        assert weights.shape == valid.shape and weights.dtype == torch.float32
        assert torch.all(weights[~valid] == 0) and torch.all((weights[valid] > 0) & (weights[valid] <= 1))
    assert torch.all(weights[0, 2] == 0)                                         # the empty response: a zero row


def test_make_relevance_fn_matches_relevance_and_checks_the_tokenizer(models_by_backbone, tokenizer, batch):
    model = models_by_backbone["causal"]
    fn = disc.make_relevance_fn(model, tokenizer, policy_tokenizer=tokenizer, max_tokens_per_batch=64)
    assert torch.equal(fn(*batch), disc.relevance(model, tokenizer, *batch, max_tokens_per_batch=64))
    random_a = disc.make_relevance_fn(kind="random", seed=3)(*batch)
    assert torch.equal(random_a, disc.make_relevance_fn(kind="random", seed=3)(*batch))
    with pytest.raises(ValueError, match="tokenizer differs"):
        disc.make_relevance_fn(model, tokenizer, policy_tokenizer=bpe_tokenizer())
    with pytest.raises(ValueError, match="unknown relevance kind"):
        disc.make_relevance_fn(kind="oracle")


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


def test_span_labels_follow_character_offsets_on_a_bpe_tokenizer():
    tok = bpe_tokenizer()
    text = "the boats sail into a storm"
    ids, offsets = disc.text_token_spans(tok, text)
    assert len(ids) > len(text.split())                                          # sub-word pieces
    start = text.index("boats")
    example = disc.span_example(tok, "Mention boats.", text, [[start, start + len("boats")]], type="include")
    assert example["response_ids"] == ids + [tok.eos_token_id] and example["labels"][-1] == 0.0
    relevant = "".join(text[s:e] for (s, e), y in zip(offsets, example["labels"]) if y == 1.0)
    assert relevant == "boats"
    tail = disc.span_example(tok, "End with storm.", text, [[len(text) - 2, len(text)]], add_eos=False)
    assert tail["labels"] == [float(end > len(text) - 2) for _, end in offsets]   # a span cut inside a piece
    with pytest.raises(ValueError, match="bad span"):
        disc.span_example(tok, "x", text, [[5, 3]])


def test_span_jsonl_reports_the_bad_line(tmp_path):
    tok = bpe_tokenizer()
    path = tmp_path / "spans.jsonl"
    path.write_text(json.dumps({"rubric": "Mention boats.", "response": "the boats", "spans": [[4, 9]]}) + "\n"
                    + json.dumps({"rubric": "Mention boats.", "response": "the boats"}) + "\n")
    with pytest.raises(ValueError, match=r"spans.jsonl:2: KeyError"):
        disc.load_span_jsonl(str(path), tok)
    path.write_text(json.dumps({"rubric": "Mention boats.", "response": "the boats", "spans": [[4, 9]]}) + "\n")
    (example,) = disc.load_span_jsonl(str(path), tok)
    assert sum(example["labels"]) >= 1 and example["labels"][0] == 0.0


def test_greedy_parsing_counts_and_drops_malformed_answers_and_missing_quotes(tokenizer):
    response = "boat with Anna ; boat"
    assert disc.parse_greedy_answer('{"relevance": "all"}', response) == ([(0, len(response))], 0)
    assert disc.parse_greedy_answer('{"relevance": "none"}', response) == ([], 0)
    spans, missing = disc.parse_greedy_answer('{"relevance": "partial", "segments": ["boat", "whale"]}', response)
    assert spans == [(0, 4), (17, 21)] and missing == 1                           # every occurrence; whale dropped
    answers = ['{"relevance": "partial", "segments": ["Anna", "moon"]}', "sure! the word boat", '{"relevance": "maybe"}']
    labels, stats = disc.greedy_labels(answers, [response] * 3, tokenizer)
    assert labels == [[0.0, 0.0, 1.0, 0.0, 0.0], None, None]
    assert stats == {"answers": 3, "malformed": 2, "quotes_not_found": 1}


def test_llm_quotes_asks_one_question_per_pair_with_rubric_and_response():
    asked = []

    def fake_generate(prompts):
        asked.extend(prompts)
        return ['{"relevance": "none"}'] * len(prompts)

    answers = disc.llm_quotes(fake_generate, ["Start with 'boat'.", "Avoid 'fish'."], ["boat and sea", "the fish"])
    assert answers == ['{"relevance": "none"}'] * 2 and len(asked) == 2
    assert "Start with 'boat'." in asked[0] and "boat and sea" in asked[0]
    assert "Avoid 'fish'." in asked[1] and "the fish" in asked[1]


def test_rubric_world_greedy_quoter_points_at_named_words(tokenizer):
    rubric = data.make_rubric("include", word="boat")
    example = disc.make_example(rubric["description"], tokenizer.convert_tokens_to_ids(["a", "boat", "boat"]) + [2],
                                [0, 1, 1, 0], type="include", side="positive", violated=False,
                                words=["a", "boat", "boat"], rubric=rubric, identifiable=True)
    (scores,), stats = disc.greedy_predictions([example], tokenizer)
    assert scores.tolist() == [0.0, 1.0, 1.0, 0.0] and stats["malformed"] == 0
    assert json.loads(disc.rubric_world_quote(data.make_rubric("length", lo=2, hi=4), ["a"])) == {"relevance": "all"}
    assert json.loads(disc.rubric_world_quote(rubric, ["a"])) == {"relevance": "none"}


def test_llm_editor_keeps_only_edits_that_flip_the_target_verdict(tokenizer):
    rubric = data.make_rubric("starts_with", word="boat")
    other = data.make_rubric("include", word="fish")
    judge = lambda r, text: data.passes(r, text.split())                          # noqa: E731
    positive = "boat with fish"
    answers = iter(['{"modified": "the with fish"}',                              # flips: kept
                    '{"modified": "boat and fish"}',                              # still passes: rejected
                    '{"modified": "the with moon"}',                              # breaks `other` too: rejected
                    'here you go: "the with fish"',                               # not the JSON object
                    '{"modified": "boat with fish"}'])                            # unchanged
    fake_generate = lambda prompts: [next(answers) for _ in prompts]              # noqa: E731
    items = [(rubric, positive, [other])] * 5
    examples, stats = disc.llm_minimal_pairs(fake_generate, judge, items, tokenizer)
    assert stats == {"asked": 5, "malformed": 1, "unchanged": 1, "not_flipped": 1, "side_effects": 1, "kept": 1}
    assert [e["side"] for e in examples] == ["positive", "negative"]
    assert examples[0]["labels"] == [1.0, 0.0, 0.0, 0.0] and examples[1]["labels"] == [1.0, 0.0, 0.0, 0.0]
    assert examples[1]["response_ids"][-1] == tokenizer.eos_token_id


def test_hf_generate_fn_runs_a_local_causal_lm(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id))
    generate = disc.hf_generate_fn(lm, tokenizer, max_new_tokens=4)
    first = generate(["boat with fish", "a storm"])
    assert len(first) == 2 and all(isinstance(c, str) for c in first) and first == generate(["boat with fish", "a storm"])


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
    prompts = data.make_splits(seed=0, n_train=6, n_val=1, n_test=1, n_unseen=1)["train"]
    examples = disc.rubric_world_examples(prompts, tokenizer)
    model = disc.build_toy_discriminator(tokenizer, hidden=32, layers=1, heads=2)
    losses = disc.train_discriminator(model, tokenizer, examples, steps=40, batch_size=16, progress=False)
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
    with pytest.raises(ValueError, match="empty response text"):
        disc.text_token_spans(bpe_tokenizer(), "  ")


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
    prompts = data.make_splits(seed=0, n_train=4, n_val=1, n_test=1, n_unseen=1)["train"]
    losses = disc.train_discriminator(model, tokenizer, disc.rubric_world_examples(prompts, tokenizer), steps=5,
                                      batch_size=8, progress=False)
    assert all(l == l for l in losses)
    disc.save_discriminator(model, tokenizer, str(tmp_path / "qwen"))
    loaded, _ = disc.load_discriminator(str(tmp_path / "qwen"), policy_tokenizer=tokenizer)
    assert type(loaded).__name__ == "Qwen2ForTokenClassification"
    weights = disc.make_relevance_fn(loaded, tokenizer, policy_tokenizer=tokenizer)(*batch)
    torch.testing.assert_close(weights, slow_relevance(loaded, tokenizer, *batch), atol=2e-6, rtol=1e-5)


def test_load_or_train_caches_by_settings(tmp_path, monkeypatch, capsys):
    small = data.make_splits(seed=0, n_train=8, n_val=1, n_test=1, n_unseen=1)
    monkeypatch.setattr(data, "make_splits", lambda seed=0: small)
    settings = {"hidden": 16, "layers": 1, "heads": 2, "steps": 3, "batch_size": 4}
    model, tok = disc.load_or_train_toy_discriminator(cache_dir=str(tmp_path / "d"), settings=settings)
    assert "toy discriminator" in capsys.readouterr().out
    again, _ = disc.load_or_train_toy_discriminator(cache_dir=str(tmp_path / "d"), settings=settings)
    assert capsys.readouterr().out == ""                                         # loaded, not retrained
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    disc.load_or_train_toy_discriminator(cache_dir=str(tmp_path / "d"), settings={**settings, "steps": 4})
    assert "toy discriminator" in capsys.readouterr().out                        # other settings: retrained
    with pytest.raises(ValueError, match="unknown discriminator settings"):
        disc.load_or_train_toy_discriminator(cache_dir=str(tmp_path / "d"), settings={"step": 3})
