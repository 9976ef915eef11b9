"""
relevance/checker_edits.py — the paper's minimal modifications, found by code: for a response and a rubric with a
rule checker, a smallest edit of the response's tokens that flips the checker's verdict, and the token-diff labels of
both sides.

Paper:    paper appendix (discriminator training data): a positive response, a minimal modification that violates
          exactly one rubric, the tokens that differ labelled relevant; METHOD.md §4. There an LLM writes the
          edit; where a rubric has a checker (IFEval's, Rubric World's) a bounded search can find one instead, and
          the checker itself confirms that the verdict flipped.
Input:    a response as token ids (its end-of-sequence token, if any, left untouched), a verdict function
          ids -> bool (the checker on the decoded text), token sequences to put in (the rubric's own words first)
Output:   the edited ids and the size of the edit, or None when no edit within the budget flips the verdict

Search, small edits first, leftmost first, at most `max_calls` checker calls per (response, rubric):
  1. delete one token;          2. delete every occurrence of one token (a repeated keyword, every comma);
  3. put a candidate at the start or at the end: a rubric's word, all its words together (a response that lacks
     two keywords), a punctuation mark, a capitalised word, a piece of markup a format rubric counts (a title, a
     placeholder, a bullet point, a highlight);
  4. delete a span of 2, then 3 tokens;     5. put a candidate 2 to MAX_REPEAT times at the end (a count: "at
     least 3 placeholders", "exactly 2 bullet points");      6. put a candidate in place of a token, or before it.
A verdict a small edit cannot flip ("at least 300 words", a paragraph count, the response's language) exhausts the
budget: such a rubric is about the whole response, and its response is labelled 1 everywhere (counted apart).
A put has no place the response marks (trap 2 of METHOD.md §4): the edited side's label is identifiable (the word
put in), the original side's is not.
"""

import multiprocessing
from collections import defaultdict
from typing import Callable, Iterator

from tqdm import tqdm

from discriminator import make_example, token_diff_labels

MAX_CALLS = 600                  # checker calls per (response, rubric): bounds the search (IFEval's slowest, the
#                                  language check, costs ~12 ms a call on a 2-core CPU)
MAX_REPEAT = 4                   # step 5 puts a candidate in up to this many times


def candidate_edits(ids: list[int], puts: list[list[int]], tail: int = 1) -> Iterator[tuple[str, list[int]]]:
    """(kind of edit, edited ids) in the order of the card; the last `tail` tokens (the EOS) are never touched.
    `puts`: token sequences an edit may put in (a rubric's word may take several tokens).

    >>> [e for _, e in candidate_edits([5, 6, 5, 2], [[9]])][:7]   # one out, both 5s out, 9 at the ends, 2 out
    [[6, 5, 2], [5, 5, 2], [5, 6, 2], [6, 2], [9, 5, 6, 5, 2], [5, 6, 5, 9, 2], [5, 2]]
    """
    body = ids[:len(ids) - tail]
    eos = ids[len(ids) - tail:]
    for t in range(len(body)):                                                    # 1. one token out
        yield "delete", body[:t] + body[t + 1:] + eos
    for token in dict.fromkeys(body):                                             # 2. every copy of one token out
        if body.count(token) > 1:
            yield "delete", [i for i in body if i != token] + eos
    for new in puts:                                                              # 3. put in at the start, at the end
        yield "put", new + body + eos
        yield "put", body + new + eos
    for width in (2, 3):                                                          # 4. a short span out
        for t in range(len(body) - width + 1):
            yield "delete", body[:t] + body[t + width:] + eos
    for times in range(2, MAX_REPEAT + 1):                                        # 5. put in several times, at the end
        for new in puts:
            yield "put", body + new * times + eos
    for new in puts:
        for t in range(len(body)):                                                # 6. in place of a token, or before it
            if body[t:t + 1] != new:
                yield "put", body[:t] + new + body[t + 1:] + eos
            yield "put", body[:t] + new + body[t:] + eos


def minimal_edit(ids: list[int], verdict: Callable[[list[int]], bool], puts: list[list[int]],
                 max_calls: int = MAX_CALLS, tail: int = 1) -> tuple[list[int] | None, str, int]:
    """The first candidate edit (smallest first) whose verdict differs from the response's: (edited ids, kind
    "delete" | "put", checker calls spent); (None, "none", calls) when none does within max_calls. A checker that
    raises propagates (the caller counts it)."""
    original = verdict(ids)
    calls = 1
    for kind, edited in candidate_edits(ids, puts, tail):
        if calls >= max_calls:
            break
        calls += 1
        if verdict(edited) != original:
            return edited, kind, calls
    return None, "none", calls


def label_pair(ids: list[int], edited: list[int] | None, kind: str, rubric: dict, passes: bool, **info) -> list[dict]:
    """Discriminator examples of one (response, rubric): both sides of the minimal pair with their token-diff labels
    (side "positive" meets the rubric, "negative" does not; a label is identifiable from its own side when that side
    holds the edited tokens: the original of a deletion, the result of a put), or, with no edit, the response
    labelled 1 everywhere (scope "whole": the rubric is about the whole response)."""
    common = dict(type=rubric["type"], **info)
    if edited is None:
        return [make_example(rubric["description"], ids, [1.0] * len(ids), violated=not passes, scope="whole",
                             side="positive" if passes else "negative", identifiable=False, edited=False, **common)]
    ids_labels, edited_labels = token_diff_labels(ids, edited)
    sides = [(ids, ids_labels, passes, kind == "delete"), (edited, edited_labels, not passes, kind == "put")]
    return [make_example(rubric["description"], side_ids, labels, violated=not meets, scope="tokens", edited=is_edit,
                         side="positive" if meets else "negative", identifiable=holds_edit, **common)
            for (side_ids, labels, meets, holds_edit), is_edit in zip(sides, (False, True))]


PUT_TEXTS = (",", ".", "!", "*", "#", "\n", '"', " The", " the",           # tokens any rubric's edit may put in,
             " <<title>>", " [name]", "\n* point", " *note*")                # and markup a format rubric counts


def put_candidates(tokenizer, rubric: dict) -> list[list[int]]:
    """Token sequences an edit may put into a response: the rubric's own words (keywords, forbidden words, an end
    phrase, a letter, ...) each with a leading space, all of them together when there are several, then PUT_TEXTS
    (punctuation, a capitalised and a plain word, markup: a title, a placeholder, a bullet point, a highlight)."""
    args = rubric.get("args", {})
    words = [w.strip() for w in [v for v in args.values() if isinstance(v, str)] + [
        w for v in args.values() if isinstance(v, list) for w in v if isinstance(w, str)] if w.strip()]
    together = [" " + " ".join(words)] if len(words) > 1 else []
    texts = [" " + w for w in words] + together + list(PUT_TEXTS)
    return [ids for ids in dict.fromkeys(tuple(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
            if ids]


def checker_examples(prompts: list[dict], responses: list[list[list[int]]], tokenizer, checkers: dict,
                     max_calls: int = MAX_CALLS, progress: str = "", workers: int = 1) -> tuple[list[dict], dict]:
    """Minimal pairs of a policy's responses, labelled by checker search: (examples, {rubric type: counts}).

    responses[b][g]: token ids of a response to prompts[b], its end-of-sequence token last when it has one.
    Counts per type: pairs, token_labels (an edit flipped the verdict), whole (no edit within max_calls did),
    crashed (the checker raised: the pair is skipped), no_checker, empty (an empty response is skipped), calls.
    `progress`: a tqdm bar over the prompts with this title (none when empty). `workers` > 1: prompts labelled in
    that many forked processes (the search is pure Python, one core each); the result is the one process's."""
    global _FORKED_JOB
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if workers > 1 and "fork" not in multiprocessing.get_all_start_methods():
        raise ValueError("labelling in several processes needs the fork start method, which this platform lacks: "
                         "use workers=1")
    chunks = [range(start, min(start + CHUNK_PROMPTS, len(prompts))) for start in range(0, len(prompts), CHUNK_PROMPTS)]
    job = (prompts, responses, tokenizer, checkers, max_calls)
    examples = []
    stats = defaultdict(lambda: defaultdict(int))
    pool = None
    if workers > 1 and len(chunks) > 1:
        _FORKED_JOB = job                            # read by the forked workers: nothing is pickled but the indices
        pool = multiprocessing.get_context("fork").Pool(min(workers, len(chunks)))
    try:
        done = pool.imap(_label_forked_chunk, chunks) if pool else (_label_chunk(job, chunk) for chunk in chunks)
        with tqdm(desc=progress, total=len(prompts), unit="prompt", disable=not progress) as bar:
            for chunk, (chunk_examples, chunk_stats) in zip(chunks, done):       # in the prompts' order
                examples += chunk_examples
                for rubric_type, counts in chunk_stats.items():
                    for name, value in counts.items():
                        stats[rubric_type][name] += value
                bar.update(len(chunk))
    finally:
        if pool:
            pool.terminate()
        _FORKED_JOB = None
    return examples, {t: dict(c) for t, c in sorted(stats.items())}


CHUNK_PROMPTS = 8                # prompts per unit of work (a worker's share, a step of the progress bar)
_FORKED_JOB = None


def _label_forked_chunk(chunk: range) -> tuple[list[dict], dict]:
    return _label_chunk(_FORKED_JOB, chunk)


def _label_chunk(job: tuple, chunk: range) -> tuple[list[dict], dict]:
    """checker_examples of prompts[i] for i in chunk: (examples, {rubric type: counts})."""
    prompts, responses, tokenizer, checkers, max_calls = job
    examples = []
    stats = defaultdict(lambda: defaultdict(int))
    for i in chunk:
        prompt = prompts[i]
        for ids in responses[i]:
            tail = int(bool(ids) and ids[-1] == tokenizer.eos_token_id)
            text_of = lambda e: tokenizer.decode(e[:len(e) - tail], skip_special_tokens=True)  # noqa: E731
            for rubric in prompt["rubrics"]:
                count = stats[rubric["type"]]
                checker = checkers.get(rubric["type"])
                count["pairs"] += 1
                if checker is None or not text_of(ids).strip():
                    count["no_checker" if checker is None else "empty"] += 1
                    continue
                verdict = lambda e, c=checker, r=rubric: bool(c(text_of(e), **r.get("args", {})))  # noqa: E731
                try:
                    passes = verdict(ids)
                    edited, kind, calls = minimal_edit(ids, verdict,
                                                       [list(p) for p in put_candidates(tokenizer, rubric)],
                                                       max_calls, tail)
                except Exception:                                # a crashed checker: counted, the pair skipped
                    count["crashed"] += 1
                    continue
                count["calls"] += calls
                count["token_labels" if edited is not None else "whole"] += 1
                examples += label_pair(ids, edited, kind, rubric, passes, prompt_id=prompt["id"])
    return examples, {t: dict(c) for t, c in stats.items()}
