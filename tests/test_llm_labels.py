"""llm_labels.py: character spans to token labels, the greedy-quote baseline's strict parser, the LLM editor's
checks (every rejected answer counted), and rubric_world's rule-based quoter."""

import json

import pytest
import torch

from relevance import llm_labels
from tasks import rubric_world
from relevance import rubric_world_labels
from discriminator import make_example
from test_discriminator import bpe_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return rubric_world.build_tokenizer()


def test_empty_response_text_is_refused():
    with pytest.raises(ValueError, match="empty response text"):
        llm_labels.text_token_spans(bpe_tokenizer(), "  ")


def test_span_labels_follow_character_offsets_on_a_bpe_tokenizer():
    tok = bpe_tokenizer()
    text = "the boats sail into a storm"
    ids, offsets = llm_labels.text_token_spans(tok, text)
    assert len(ids) > len(text.split())                                          # sub-word pieces
    start = text.index("boats")
    example = llm_labels.span_example(tok, "Mention boats.", text, [[start, start + len("boats")]], type="include")
    assert example["response_ids"] == ids + [tok.eos_token_id] and example["labels"][-1] == 0.0
    relevant = "".join(text[s:e] for (s, e), y in zip(offsets, example["labels"]) if y == 1.0)
    assert relevant == "boats"
    tail = llm_labels.span_example(tok, "End with storm.", text, [[len(text) - 2, len(text)]], add_eos=False)
    assert tail["labels"] == [float(end > len(text) - 2) for _, end in offsets]   # a span cut inside a piece
    with pytest.raises(ValueError, match="bad span"):
        llm_labels.span_example(tok, "x", text, [[5, 3]])


def test_span_jsonl_reports_the_bad_line(tmp_path):
    tok = bpe_tokenizer()
    path = tmp_path / "spans.jsonl"
    path.write_text(json.dumps({"rubric": "Mention boats.", "response": "the boats", "spans": [[4, 9]]}) + "\n"
                    + json.dumps({"rubric": "Mention boats.", "response": "the boats"}) + "\n")
    with pytest.raises(ValueError, match=r"spans.jsonl:2: KeyError"):
        llm_labels.load_span_jsonl(str(path), tok)
    path.write_text(json.dumps({"rubric": "Mention boats.", "response": "the boats", "spans": [[4, 9]]}) + "\n")
    (example,) = llm_labels.load_span_jsonl(str(path), tok)
    assert sum(example["labels"]) >= 1 and example["labels"][0] == 0.0


def test_greedy_parsing_counts_and_drops_malformed_answers_and_missing_quotes(tokenizer):
    response = "boat with Anna ; boat"
    assert llm_labels.parse_greedy_answer('{"relevance": "all"}', response) == ([(0, len(response))], 0)
    assert llm_labels.parse_greedy_answer('{"relevance": "none"}', response) == ([], 0)
    spans, missing = llm_labels.parse_greedy_answer('{"relevance": "partial", "segments": ["boat", "whale"]}', response)
    assert spans == [(0, 4), (17, 21)] and missing == 1                           # every occurrence; whale dropped
    answers = ['{"relevance": "partial", "segments": ["Anna", "moon"]}', "sure! the word boat", '{"relevance": "maybe"}']
    labels, stats = llm_labels.greedy_labels(answers, [response] * 3, tokenizer)
    assert labels == [[0.0, 0.0, 1.0, 0.0, 0.0], None, None]
    assert stats == {"answers": 3, "malformed": 2, "quotes_not_found": 1}


def test_llm_quotes_asks_one_question_per_pair_with_rubric_and_response():
    asked = []

    def fake_generate(prompts):
        asked.extend(prompts)
        return ['{"relevance": "none"}'] * len(prompts)

    answers = llm_labels.llm_quotes(fake_generate, ["Start with 'boat'.", "Avoid 'fish'."], ["boat and sea", "the fish"])
    assert answers == ['{"relevance": "none"}'] * 2 and len(asked) == 2
    assert "Start with 'boat'." in asked[0] and "boat and sea" in asked[0]
    assert "Avoid 'fish'." in asked[1] and "the fish" in asked[1]


def test_rubric_world_greedy_quoter_points_at_named_words(tokenizer):
    rubric = rubric_world.make_rubric("include", word="boat")
    example = make_example(rubric["description"], tokenizer.convert_tokens_to_ids(["a", "boat", "boat"]) + [2],
                                [0, 1, 1, 0], type="include", side="positive", violated=False,
                                words=["a", "boat", "boat"], rubric=rubric, identifiable=True)
    (scores,), stats = rubric_world_labels.greedy_predictions([example], tokenizer)
    assert scores.tolist() == [0.0, 1.0, 1.0, 0.0] and stats["malformed"] == 0
    assert json.loads(rubric_world_labels.rubric_world_quote(rubric_world.make_rubric("length", lo=2, hi=4), ["a"])) == {"relevance": "all"}
    assert json.loads(rubric_world_labels.rubric_world_quote(rubric, ["a"])) == {"relevance": "none"}


def test_llm_editor_keeps_only_edits_that_flip_the_target_verdict(tokenizer):
    rubric = rubric_world.make_rubric("starts_with", word="boat")
    other = rubric_world.make_rubric("include", word="fish")
    judge = lambda r, text: rubric_world.passes(r, text.split())                          # noqa: E731
    positive = "boat with fish"
    answers = iter(['{"modified": "the with fish"}',                              # flips: kept
                    '{"modified": "boat and fish"}',                              # still passes: rejected
                    '{"modified": "the with moon"}',                              # breaks `other` too: rejected
                    'here you go: "the with fish"',                               # not the JSON object
                    '{"modified": "boat with fish"}'])                            # unchanged
    fake_generate = lambda prompts: [next(answers) for _ in prompts]              # noqa: E731
    items = [(rubric, positive, [other])] * 5
    examples, stats = llm_labels.llm_minimal_pairs(fake_generate, judge, items, tokenizer)
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
    generate = llm_labels.hf_generate_fn(lm, tokenizer, max_new_tokens=4)
    first = generate(["boat with fish", "a storm"])
    assert len(first) == 2 and all(isinstance(c, str) for c in first) and first == generate(["boat with fish", "a storm"])
