"""
relevance/llm_labels.py — relevance labels written by an LLM, or by you: the paper's LLM editor, the greedy-quote
baseline, and character spans from a JSONL file.

Paper:    paper appendix (discriminator training data): an LLM makes a minimal modification of a positive response
          that violates exactly one rubric; the token diff of the pair is the label (discriminator.token_diff_labels).
          The "greedy" baseline asks an LLM to quote the segments of a response relevant to a criterion.
          METHOD.md §4.
Input:    generate_fn(list of prompts) -> list of completions (any local causal LM through hf_generate_fn, or a
          fake in tests); a judge(rubric, text) -> bool for the editor's check; a fast tokenizer for offsets
Output:   discriminator examples (discriminator.make_example) and counts of every answer that was rejected

Strict:   answers are parsed as exactly the asked JSON object; malformed answers, quotes absent from the
          response, edits that do not flip the target verdict or change another one are dropped and counted,
          never fuzzily repaired.
Use:      rubrics with a rule checker get code-made minimal edits (relevance/build.py); these are for
          rubrics only an LLM judge can read ("the tone is formal").

Demo:     see tests/test_llm_labels.py (a fake generate_fn drives every branch)
"""

import json
from typing import Callable

import torch

from discriminator import make_example, token_diff_labels


def text_token_spans(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of `text` and each token's character span (a fast tokenizer's offset mapping)."""
    if not text.strip():
        raise ValueError("empty response text: nothing to label")
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("character offsets need a fast tokenizer (PreTrainedTokenizerFast)")
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(encoded["input_ids"]), [tuple(span) for span in encoded["offset_mapping"]]


def spans_to_token_labels(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[float]:
    """A token is relevant (1) when its characters overlap any labelled span [start, end).

    >>> spans_to_token_labels([(0, 4), (5, 7), (8, 11)], [(5, 9)])
    [0.0, 1.0, 1.0]
    """
    return [float(any(start < end_ and s < end for s, end_ in spans)) for start, end in offsets]


def span_example(tokenizer, description: str, response: str, spans: list, add_eos: bool = True, **info) -> dict:
    """Character spans of a response -> a token example (plus the end-of-sequence token, label 0, when
    `add_eos`, because the policy's responses end with it)."""
    ids, offsets = text_token_spans(tokenizer, response)
    for span in spans:
        if len(span) != 2 or not 0 <= span[0] < span[1] <= len(response):
            raise ValueError(f"bad span {span!r} for a response of {len(response)} characters "
                             "(need [start, end) with 0 <= start < end <= len)")
    labels = spans_to_token_labels(offsets, [tuple(s) for s in spans])
    if add_eos and tokenizer.eos_token_id is not None:
        ids = ids + [tokenizer.eos_token_id]
        labels = labels + [0.0]
    return make_example(description, ids, labels, **info)


def load_span_jsonl(path: str, tokenizer) -> list[dict]:
    """Bring your own labels: one JSON object per line, {"rubric": str, "response": str, "spans": [[s, e], ...]}
    with character offsets into "response"; converted to token labels with the tokenizer's offsets."""
    examples = []
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                examples.append(span_example(tokenizer, row["rubric"], row["response"], row["spans"]))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
                raise ValueError(f"{path}:{line_no}: {type(error).__name__}: {error} (need fields "
                                 "'rubric', 'response', 'spans')") from error
    return examples


# ---------------------------------------------------------------------------- the greedy baseline (LLM quotes)
GREEDY_PROMPT = (
    "You are given a criterion and a response. Quote the parts of the response that decide whether the "
    "response meets the criterion.\nAnswer with one JSON object and nothing else: "
    '{{"relevance": "all"}} if the whole response is relevant, {{"relevance": "none"}} if nothing is, '
    'or {{"relevance": "partial", "segments": ["exact quote", ...]}} with segments copied verbatim '
    "from the response.\n\nCriterion: {rubric}\n\nResponse:\n{response}\n\nJSON:")


def parse_greedy_answer(answer: str, response: str) -> tuple[list[tuple[int, int]] | None, int]:
    """Strictly parse a quoting answer -> (character spans or None when malformed, number of quotes not found).

    Every occurrence of a quote is labelled; a quote absent from the response is dropped and counted,
    never fuzzily matched.
    """
    try:
        parsed = json.loads(answer.strip())
    except json.JSONDecodeError:
        return None, 0
    if not isinstance(parsed, dict) or parsed.get("relevance") not in ("all", "none", "partial"):
        return None, 0
    if parsed["relevance"] == "all":
        return [(0, len(response))], 0
    if parsed["relevance"] == "none":
        return [], 0
    segments = parsed.get("segments")
    if not isinstance(segments, list) or not all(isinstance(s, str) and s for s in segments):
        return None, 0
    spans = []
    missing = 0
    for quote in segments:
        start = response.find(quote)
        missing += start < 0
        while start >= 0:
            spans.append((start, start + len(quote)))
            start = response.find(quote, start + 1)
    return spans, missing


def greedy_labels(answers: list[str], responses: list[str], tokenizer) -> tuple[list[list[float] | None], dict]:
    """Quoting answers -> token labels of each response text (None where the answer was malformed), plus
    counts {"answers", "malformed", "quotes_not_found"}."""
    if len(answers) != len(responses):
        raise ValueError(f"{len(answers)} answers for {len(responses)} responses")
    labels = []
    stats = {"answers": len(answers), "malformed": 0, "quotes_not_found": 0}
    for answer, response in zip(answers, responses):
        spans, missing = parse_greedy_answer(answer, response)
        stats["quotes_not_found"] += missing
        if spans is None:
            stats["malformed"] += 1
            labels.append(None)
            continue
        labels.append(spans_to_token_labels(text_token_spans(tokenizer, response)[1], spans))
    return labels, stats


def llm_quotes(generate_fn: Callable[[list[str]], list[str]], descriptions: list[str], responses: list[str]):
    """Ask an LLM (generate_fn: list of prompts -> list of completions) for the greedy baseline's quotes."""
    return generate_fn([GREEDY_PROMPT.format(rubric=d, response=r) for d, r in zip(descriptions, responses)])


# ---------------------------------------------------------------------------- the LLM editor (minimal pairs)
EDIT_PROMPT = (
    "Rewrite the response with the smallest possible change so that it NO LONGER meets the criterion "
    "below, while everything else about it stays the same (change as few words as you can; keep every "
    "other requirement it meets).\nAnswer with one JSON object and nothing else: "
    '{{"modified": "the changed response"}}.\n\nCriterion: {rubric}\n\nResponse:\n{response}\n\nJSON:')


def parse_edit(answer: str) -> str | None:
    """The modified response from {"modified": str}, or None unless the answer is exactly that JSON object."""
    try:
        parsed = json.loads(answer.strip())
    except json.JSONDecodeError:
        return None
    if not isinstance(parsed, dict) or set(parsed) != {"modified"} or not isinstance(parsed["modified"], str):
        return None
    return parsed["modified"] if parsed["modified"].strip() else None


def llm_minimal_pairs(generate_fn: Callable[[list[str]], list[str]], judge: Callable[[dict, str], bool],
                      items: list[tuple[dict, str, list[dict]]], tokenizer) -> tuple[list[dict], dict]:
    """Minimal pairs from an LLM editor (the paper's recipe) for real data.

    items: (rubric, positive response text, the prompt's other rubrics). The LLM proposes a minimal edit
    that breaks `rubric`; the judge (judge(rubric, text) -> bool) must say the positive passes, the edit
    fails, and every other rubric keeps its verdict — otherwise the pair is rejected and counted.
    The token diff labels both sides (with the end-of-sequence token appended, as the policy emits it).
    """
    answers = generate_fn([EDIT_PROMPT.format(rubric=r["description"], response=text) for r, text, _ in items])
    examples = []
    stats = {"asked": len(items), "malformed": 0, "unchanged": 0, "not_flipped": 0, "side_effects": 0, "kept": 0}
    for (rubric, positive, others), answer in zip(items, answers):
        negative = parse_edit(answer)
        reason = ("malformed" if negative is None else "unchanged" if negative.strip() == positive.strip()
                  else "not_flipped" if not judge(rubric, positive) or judge(rubric, negative)
                  else "side_effects" if any(judge(o, positive) != judge(o, negative) for o in others) else "kept")
        stats[reason] += 1
        if reason != "kept":
            continue
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        pos_ids = text_token_spans(tokenizer, positive)[0] + eos
        neg_ids = text_token_spans(tokenizer, negative)[0] + eos
        pos_labels, neg_labels = token_diff_labels(pos_ids, neg_ids)
        examples.append(make_example(rubric["description"], pos_ids, pos_labels, type=rubric.get("type"),
                                     violated=False, side="positive"))
        examples.append(make_example(rubric["description"], neg_ids, neg_labels, type=rubric.get("type"),
                                     violated=True, side="negative"))
    return examples, stats


def hf_generate_fn(model, tokenizer, max_new_tokens: int = 256) -> Callable[[list[str]], list[str]]:
    """Wrap any local Hugging Face causal LM as generate_fn(prompts) -> completions (greedy decoding,
    the chat template when the tokenizer has one)."""
    def generate(prompts: list[str]) -> list[str]:
        completions = []
        for prompt in prompts:
            if getattr(tokenizer, "chat_template", None):
                ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                    add_generation_prompt=True, return_tensors="pt")
                ids = ids if isinstance(ids, torch.Tensor) else ids["input_ids"]
            else:
                ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
            ids = ids.to(next(model.parameters()).device)
            with torch.no_grad():
                out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                     do_sample=False, pad_token_id=tokenizer.pad_token_id)
            completions.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
        return completions
    return generate
