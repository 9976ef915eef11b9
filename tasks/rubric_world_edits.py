"""
tasks/rubric_world_edits.py — Rubric World's minimal-modification editor, and the imperfect teacher built on it.

Paper:    the discriminator's training data (appendix: a positive response, then a minimal modification that
          violates exactly one rubric); METHOD.md §4.
Editor.   violate() edits a response that satisfies a rubric into one that violates exactly that rubric (every
          other rubric that passed still passes: checked, and retried over several candidate edits); repair() is
          the reverse. The table of edits per rubric type, and which of their labels one response can identify,
          is in relevance/rubric_world_labels.py, where the edits become the discriminator's labels.
Teacher.  teacher_response() starts from a satisfying response and breaks each rubric with probability
          1 − p_satisfy through the editor, so a wrong answer differs from a right one only where it must. The
          toy policy is warm-started on it (policies/toy.py).

Deviations (numbered as in METHOD.md §9):
  5. The paper's minimal modifications are written by an LLM; here code writes them, so the labels are exact.
"""

import random
from typing import Iterator

from tasks.rubric_world import (CHECKERS, FILLERS, MAX_WORDS, NAMES, SEP, make_rubric,  # make_rubric: the doctests
                                passes, satisfying_response)


# ----------------------------------------------------------------------------- minimal-modification editors
def _content_positions(words: list[str]) -> list[int]:
    return [i for i, w in enumerate(words) if w != SEP]


def _replace(words: list[str], i: int, new: str) -> list[str]:
    return words[:i] + [new] + words[i + 1:]


def _insert(words: list[str], i: int, new: str) -> list[str]:
    return words[:i] + [new] + words[i:]


def _delete(words: list[str], positions) -> list[str]:
    drop = set(positions)
    return [w for i, w in enumerate(words) if i not in drop]


def _fillers(rng: random.Random, n: int) -> list[str]:
    return [rng.choice(FILLERS) for _ in range(n)]


def _put_word(words: list[str], word: str, rng: random.Random, tries: int = 12) -> Iterator[list[str]]:
    """`word` in place of a random word, else inserted at a random position."""
    content = _content_positions(words)
    for _ in range(tries):
        if content:
            yield _replace(words, rng.choice(content), word)
    for _ in range(tries):
        yield _insert(words, rng.randint(0, len(words)), word)


def _drop_word(words: list[str], word: str, rng: random.Random, tries: int = 12) -> Iterator[list[str]]:
    """Every occurrence of `word` replaced by a filler, else deleted."""
    for _ in range(tries):
        yield [rng.choice(FILLERS) if w == word else w for w in words]
    yield [w for w in words if w != word]


def _swap(words: list[str], i: int, j: int) -> list[str]:
    swapped = list(words)
    swapped[i], swapped[j] = swapped[j], swapped[i]
    return swapped


def _resize(words: list[str], target: int, rng: random.Random, tries: int = 12) -> Iterator[list[str]]:
    """Grow or shrink to `target` words: first just before the last word, then at random positions."""
    n_words = len(_content_positions(words))
    for attempt in range(tries):
        edited = list(words)
        if target > n_words:
            for filler in _fillers(rng, target - n_words):
                edited.insert(max(len(edited) - 1, 0) if attempt == 0 else rng.randint(0, len(edited)), filler)
        else:
            content = _content_positions(words)
            pick = content[-1 - (n_words - target):-1] if attempt == 0 else rng.sample(content, n_words - target)
            edited = _delete(words, pick)
        yield edited


def _violations(rubric: dict, words: list[str], rng: random.Random) -> Iterator[list[str]]:
    """Candidate edits that should break `rubric` (preferred, most identifiable first)."""
    kind = rubric["type"]
    args = rubric["args"]
    if kind in ("starts_with", "ends_with"):
        end = 0 if kind == "starts_with" else len(words) - 1
        yield from (_replace(words, end, f) for f in _fillers(rng, 12))
    elif kind == "include":
        yield from _drop_word(words, args["word"], rng)
    elif kind == "exclude":
        yield from _put_word(words, args["word"], rng)
    elif kind == "length":
        n_words = len(_content_positions(words))
        targets = [t for t in (args["hi"] + 1, args["lo"] - 1) if 0 < t <= MAX_WORDS and t != n_words]
        for target in rng.sample(targets, len(targets)):
            yield from _resize(words, target, rng)
    elif kind == "count":
        others = [i for i in _content_positions(words) if words[i] != args["word"]]
        yield from (_replace(words, i, args["word"]) for i in rng.sample(others, len(others)))
        yield from (_replace(words, i, f) for i, f in zip(
            [i for i, w in enumerate(words) if w == args["word"]], _fillers(rng, len(words))))
    elif kind == "lowercase":
        yield from _put_word(words, rng.choice(NAMES), rng)
    elif kind == "order":
        yield _swap(words, words.index(args["first"]), words.index(args["second"]))
        yield from _drop_word(words, args["first"], rng)
    elif kind == "parts":
        gaps = [i for i in range(1, len(words)) if SEP not in (words[i - 1], words[i])]
        yield from (_insert(words, i, SEP) for i in rng.sample(gaps, len(gaps)))
        yield from (_delete(words, [i]) for i, w in enumerate(words) if w == SEP)
    else:
        raise ValueError(f"unknown rubric type {kind!r}; known: {sorted(CHECKERS)}")


def _repair_parts(words: list[str], n: int, rng: random.Random, tries: int = 12) -> Iterator[list[str]]:
    """Drop separators that leave an empty part, then delete or insert separators to reach n parts."""
    cleaned = [w for i, w in enumerate(words)
               if w != SEP or (0 < i < len(words) - 1 and words[i - 1] != SEP)]
    while cleaned and cleaned[-1] == SEP:
        cleaned.pop()
    for _ in range(tries):
        n_parts = cleaned.count(SEP) + 1
        seps = [i for i, w in enumerate(cleaned) if w == SEP]
        if n_parts > n:
            yield _delete(cleaned, rng.sample(seps, n_parts - n))
            continue
        gaps = [i for i in range(1, len(cleaned)) if SEP not in (cleaned[i - 1], cleaned[i])]
        if len(gaps) >= n - n_parts:
            edited = list(cleaned)
            for gap in sorted(rng.sample(gaps, n - n_parts), reverse=True):
                edited.insert(gap, SEP)
            yield edited


def _repairs(rubric: dict, words: list[str], rng: random.Random) -> Iterator[list[str]]:
    """Candidate edits that should make `words` satisfy `rubric` (preferred first)."""
    kind = rubric["type"]
    args = rubric["args"]
    if kind == "starts_with":
        yield from ([_replace(words, 0, args["word"])] if words else []) + [_insert(words, 0, args["word"])]
    elif kind == "ends_with":
        yield from ([_replace(words, len(words) - 1, args["word"])] if words else []) + [words + [args["word"]]]
    elif kind == "include":
        yield from _put_word(words, args["word"], rng)
    elif kind == "exclude":
        yield from _drop_word(words, args["word"], rng)
    elif kind == "length":
        n_words = len(_content_positions(words))
        yield from _resize(words, min(max(n_words, args["lo"]), args["hi"]), rng)
    elif kind == "count":
        hits = [i for i, w in enumerate(words) if w == args["word"]]
        for _ in range(12):
            if len(hits) > args["n"]:
                yield [rng.choice(FILLERS) if i in hits[args["n"]:] else w for i, w in enumerate(words)]
            else:
                others = [i for i in _content_positions(words) if words[i] != args["word"]]
                picks = set(rng.sample(others, min(len(others), args["n"] - len(hits))))
                yield [args["word"] if i in picks else w for i, w in enumerate(words)]
    elif kind == "lowercase":
        for _ in range(12):
            yield [rng.choice(FILLERS) if w[:1].isupper() else w for w in words]
    elif kind == "order":
        yield from _repair_order(words, args["first"], args["second"], rng)
    elif kind == "parts":
        yield from _repair_parts(words, args["n"], rng)
    else:
        raise ValueError(f"unknown rubric type {kind!r}; known: {sorted(CHECKERS)}")


def _repair_order(words: list[str], first: str, second: str, rng: random.Random) -> Iterator[list[str]]:
    """Swap when both occur in the wrong order; otherwise put the missing word on the right side."""
    if first in words and second in words:
        yield _swap(words, words.index(first), words.index(second))
    for _ in range(12):
        edited = list(words)
        if first not in edited:
            stop = edited.index(second) if second in edited else len(edited)
            edited.insert(rng.randint(0, stop), first)
        if second not in edited:
            edited.insert(rng.randint(edited.index(first) + 1, len(edited)), second)
        yield edited


def _edit(rubric: dict, words: list[str], rng: random.Random, others, want: bool,
          candidates: Iterator[list[str]]) -> list[str] | None:
    """First candidate that gives `rubric` the verdict `want` and keeps every passing other rubric passing."""
    keep = [r for r in others if r is not rubric and passes(r, words)]
    for candidate in candidates:
        if passes(rubric, candidate) == want and all(passes(r, candidate) for r in keep):
            return candidate
    return None


def violate(rubric: dict, words: list[str], rng: random.Random, others: list[dict] = ()) -> list[str] | None:
    """Minimal edit of a response that satisfies `rubric` into one that violates it (None if none found).

    Every rubric in `others` that `words` satisfies is still satisfied by the result.

    >>> violate(make_rubric("starts_with", word="boat"), ["boat", "on", "sand"], random.Random(0))[1:]
    ['on', 'sand']
    """
    if not passes(rubric, words):
        raise ValueError(f"violate() needs a response that satisfies {rubric['description']!r}: {words}")
    return _edit(rubric, words, rng, others, False, _violations(rubric, words, rng))


def repair(rubric: dict, words: list[str], rng: random.Random, others: list[dict] = ()) -> list[str] | None:
    """Minimal edit of a response that violates `rubric` into one that satisfies it (None if none found).

    >>> repair(make_rubric("ends_with", word="boat"), ["sand", "and", "sea"], random.Random(0))
    ['sand', 'and', 'boat']
    """
    if passes(rubric, words):
        raise ValueError(f"repair() needs a response that violates {rubric['description']!r}: {words}")
    return _edit(rubric, words, rng, others, True, _repairs(rubric, words, rng))


# ----------------------------------------------------------------------------- teacher
TEACHER_P_SATISFY = 0.85


def teacher_response(prompt: dict, rng: random.Random, p_satisfy: float = TEACHER_P_SATISFY) -> list[str]:
    """An imperfect teacher: a satisfying response in which each rubric is broken with prob. 1 − p_satisfy.

    Breaking uses the minimal editor, so a wrong answer differs from a right one only where it must.
    """
    if not 0.0 <= p_satisfy <= 1.0:
        raise ValueError(f"p_satisfy must lie in [0, 1], got {p_satisfy}")
    words = satisfying_response(prompt, rng)
    for rubric in rng.sample(prompt["rubrics"], len(prompt["rubrics"])):
        if rng.random() >= p_satisfy and passes(rubric, words):
            words = violate(rubric, words, rng, prompt["rubrics"]) or words
    return words
