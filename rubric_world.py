"""
rubric_world.py — Rubric World: a CPU-sized instruction-following task with verifiable rubrics (the toy task).

Paper:    RTT §4 (rubric-based instruction following) and the discriminator's training data (appendix:
          positive response, minimal modification per rubric, token diff); RTT_SPEC.md §4 and §8.
Input:    a seed (splits), a prompt dict {"id", "prompt", "rubrics", "combo"}, responses as word lists
Output:   prompts with K = 3..6 rubrics each; rule checkers `CHECKERS`; a satisfying response and an
          imperfect teacher response per prompt; minimal edits that break / fix exactly one rubric;
          token relevance labels from a token diff; the word-level tokenizer; the oracle relevance
          provider fn(prompts, response_ids (B, G, T), token_mask (B, G, T)) -> (B, G, K, T); the
          discriminator's examples (both sides of every minimal pair, tagged identifiable or not).

The task.  A prompt asks for a short text about a topic and lists K rubrics in words. A response is a
          sequence of vocabulary words joined by single spaces (the rubrics' words, four fillers, and
          the separator ';'; names and other topic words appear when a rubric is broken). Nine rubric
          types, each a plain checker on the response text:

          type         args           passes when (tokens = response.split())
          starts_with  word           tokens[0] == word
          ends_with    word           tokens[-1] == word
          include      word           word in tokens
          exclude      word           word not in tokens
          length       lo, hi         lo <= number of words <= hi  (';' is a separator, not a word)
          count        word, n        word occurs exactly n times
          lowercase    -              no token starts with a capital letter
          order        first, second  both occur and the first `first` precedes the first `second`
          parts        n              ';' splits the response into exactly n non-empty parts

          Verdicts defined for bad input: an empty response and a response of more than MAX_WORDS tokens
          satisfy NO rubric (an answer that says nothing, or that never ended, follows no instruction);
          an unknown rubric type raises ValueError naming it.

Splits.   make_splits(seed) draws prompts from one seeded stream and de-duplicates them by text, so no
          test prompt is ever a training prompt. Prompts whose rubric types contain one of HELD_OUT_PAIRS
          go to "test_unseen_combos" only: train/val/test never pair those two types, which measures
          generalisation to unseen combinations. The test split is filled first, so it does not depend on
          n_train. (K = 6 prompts contain a held-out pair more often, so train leans to smaller K.)

Minimal modifications (the ground truth for token relevance, RTT_SPEC §4).  violate() edits a response
          that satisfies a rubric into one that violates exactly that rubric (every other rubric that
          passed still passes: checked, and retried over several candidate edits); repair() is the reverse.
          token_diff_labels() labels the tokens that differ (difflib on token ids; position by position
          when that labels fewer, e.g. a swap of neighbours) 1 on BOTH sides. A deletion leaves nothing to
          point at on the shorter side: we label the token right after the gap there (the end-of-sequence
          token when the gap is at the end; the last token when there is none).
          Which labels a model can recover from ONE response alone (trap 2 of RTT_SPEC §4):

          type         violating edit (preferred first)           label on the satisfying side   on the violating side
          starts_with  replace the first word                     yes (first word)               yes (first word)
          ends_with    replace the last word                      yes (last word)                yes, if the model sees EOS
          include      replace every occurrence by a filler       yes (the word)                 NO (a random filler)
          exclude      put the word in place of a random word     NO (a random word)             yes (the word)
          length       insert / delete words before the last one  partly (where the count        partly (where the count
                                                                   crosses the limit)             crosses the limit)
          count        replace one other word by the word (n+1);  NO for n+1 / partly for n-1    partly (one of the
                       else one occurrence by a filler (n-1)                                      occurrences) / NO
          lowercase    put a name in place of a random word       NO (a random word)             yes (the name)
          order        swap the first `first` and `second`        yes (both words)               yes (both words)
          parts        insert an extra ';' (else delete one)      NO (token after the gap)       partly (one of the ';')

          oracle_relevance() labels the response's own side: for a passing rubric the satisfying side of
          violate(), for a failing one the violating side of repair(); rows where no single-rubric edit
          exists (e.g. a response over MAX_WORDS) stay all 0.

Deviations (numbered as in the README's list, tagged `# DEVIATION(n)` in the code):
  5. The paper's positives and minimal modifications are written by an LLM; here they are constructed
     by code, so the labels are exact (up to the identifiability limits in the table above).
  8. The greedy baseline's "LLM" is a rule that quotes every occurrence of the words a rubric names.

Demo:     python rubric_world.py     (prompts, a satisfying response, a violated one and its diff labels)
"""

import json
import random
import re
from typing import Callable, Iterator

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

import discriminator
import llm_labels
from discriminator import make_example, token_diff_labels   # the paper's labels: the tokens a minimal edit touches

# Dimension legend (identical in every file):
#   B prompts in the batch        G responses per prompt (group)     N = B*G responses, flattened
#   K rubrics per prompt          T response tokens, right-padded    V vocabulary size

# ----------------------------------------------------------------------------- vocabulary
TOPICS = {
    "sea": ["boat", "wave", "fish", "shell", "sand", "storm", "sail", "whale"],
    "forest": ["tree", "moss", "fox", "leaf", "owl", "path", "river", "stone"],
    "city": ["street", "tower", "bus", "bridge", "market", "light", "crowd", "park"],
    "kitchen": ["bread", "soup", "knife", "salt", "oven", "apple", "honey", "plate"],
    "space": ["star", "moon", "rocket", "planet", "comet", "orbit", "dust", "signal"],
    "farm": ["cow", "barn", "field", "horse", "seed", "fence", "goat", "wheat"],
}
FILLERS = ["the", "and", "of", "very"]
NAMES = ["Anna", "Bruno", "Clara", "David", "Elena", "Felix"]
SEP = ";"
MAX_WORDS = 30                      # a response of more tokens than this satisfies no rubric
MAX_NEW_TOKENS = MAX_WORDS + 1      # the longest response a rubric accepts, plus EOS
SPECIAL_TOKENS = {"pad": "<pad>", "bos": "<bos>", "eos": "<eos>", "unk": "<unk>", "sep": "<sep>"}

# Short descriptions in plain words: the argument sits two tokens after a verb unique to its rubric type,
# which is what makes it findable by a tiny model.
DESCRIPTIONS = {
    "starts_with": "Start with '{word}'.",
    "ends_with": "End with '{word}'.",
    "include": "Include '{word}'.",
    "exclude": "Avoid '{word}'.",
    "length": "Use {lo} to {hi} words.",
    "count": "Use '{word}' exactly {n} times.",
    "lowercase": "Use no capital letters.",
    "order": "Mention '{first}' before '{second}'.",
    "parts": "Write {n} parts separated by ';'.",
}
INTRO = "Write about the {topic}."
HELD_OUT_PAIRS = (("count", "starts_with"), ("order", "parts"))
# Regimes of the study (experiments/study.py), selected as --data rubric_world:<name>: rubrics decided by tokens one
# can point at, rubrics about the whole response, and prompts with few or many rubrics (sparser all-or-nothing rewards).
LOCAL_TYPES = ("starts_with", "ends_with", "include", "exclude", "lowercase", "order")
REGIMES = {"local": {"types": LOCAL_TYPES}, "global": {"types": ("length", "count", "parts")},
           "k3": {"k_range": (3, 3)}, "k6": {"k_range": (6, 6)}}


# ----------------------------------------------------------------------------- rule checkers
def _tokens(response: str) -> list[str] | None:
    """Whitespace tokens, or None for a response no rubric accepts (empty, or over MAX_WORDS tokens)."""
    tokens = response.split()
    return tokens if 0 < len(tokens) <= MAX_WORDS else None


def check_starts_with(response: str, word: str) -> bool:
    tokens = _tokens(response)
    return tokens is not None and tokens[0] == word


def check_ends_with(response: str, word: str) -> bool:
    tokens = _tokens(response)
    return tokens is not None and tokens[-1] == word


def check_include(response: str, word: str) -> bool:
    tokens = _tokens(response)
    return tokens is not None and word in tokens


def check_exclude(response: str, word: str) -> bool:
    tokens = _tokens(response)
    return tokens is not None and word not in tokens


def check_length(response: str, lo: int, hi: int) -> bool:
    tokens = _tokens(response)
    return tokens is not None and lo <= sum(t != SEP for t in tokens) <= hi


def check_count(response: str, word: str, n: int) -> bool:
    tokens = _tokens(response)
    return tokens is not None and tokens.count(word) == n


def check_lowercase(response: str) -> bool:
    tokens = _tokens(response)
    return tokens is not None and not any(t[:1].isupper() for t in tokens)


def check_order(response: str, first: str, second: str) -> bool:
    tokens = _tokens(response)
    return tokens is not None and first in tokens and second in tokens and tokens.index(first) < tokens.index(second)


def check_parts(response: str, n: int) -> bool:
    tokens = _tokens(response)
    if tokens is None:
        return False
    parts = " ".join(tokens).split(SEP)
    return len(parts) == n and all(part.strip() for part in parts)


CHECKERS: dict[str, Callable[..., bool]] = {
    "starts_with": check_starts_with, "ends_with": check_ends_with, "include": check_include,
    "exclude": check_exclude, "length": check_length, "count": check_count,
    "lowercase": check_lowercase, "order": check_order, "parts": check_parts,
}


def make_rubric(rubric_type: str, **args) -> dict:
    """A rubric dict {"type", "args", "description"}; ValueError for an unknown type or wrong args.

    >>> make_rubric("starts_with", word="boat")["description"]
    "Start with 'boat'."
    """
    if rubric_type not in CHECKERS:
        raise ValueError(f"unknown rubric type {rubric_type!r}; known: {sorted(CHECKERS)}")
    try:
        description = DESCRIPTIONS[rubric_type].format(**args)
        CHECKERS[rubric_type]("probe", **args)
    except (KeyError, TypeError) as error:
        raise ValueError(f"rubric {rubric_type!r} got args {args}: {error}") from error
    return {"type": rubric_type, "args": dict(args), "description": description}


def passes(rubric: dict, words: list[str]) -> bool:
    """Does the response (a word list) satisfy the rubric? ValueError for an unknown rubric type."""
    checker = CHECKERS.get(rubric["type"])
    if checker is None:
        raise ValueError(f"unknown rubric type {rubric['type']!r}; known: {sorted(CHECKERS)}")
    return checker(" ".join(words), **rubric["args"])


# ----------------------------------------------------------------------------- satisfying responses
def _filler_pool(prompt: dict) -> list[str]:
    """Words a constructed response may use freely: the fillers no rubric names."""
    named = {v for r in prompt["rubrics"] for v in r["args"].values() if isinstance(v, str)}
    return [w for w in FILLERS if w not in named]


def _construct(prompt: dict, rng: random.Random) -> list[str]:
    """One random draw of the constructive generator (may still fail a rubric: the caller verifies)."""
    by_type = {r["type"]: r["args"] for r in prompt["rubrics"]}
    middle = [by_type[t]["word"] for t in ("include",) if t in by_type]
    if "count" in by_type:
        middle += [by_type["count"]["word"]] * by_type["count"]["n"]
    rng.shuffle(middle)
    if "order" in by_type:                                   # `first` somewhere before `second`
        i, j = sorted(rng.sample(range(len(middle) + 2), 2))
        middle.insert(i, by_type["order"]["first"])
        middle.insert(j, by_type["order"]["second"])
    head = [by_type["starts_with"]["word"]] if "starts_with" in by_type else []
    tail = [by_type["ends_with"]["word"]] if "ends_with" in by_type else []
    needed = len(head) + len(middle) + len(tail)
    lo, hi = (by_type["length"]["lo"], by_type["length"]["hi"]) if "length" in by_type else (5, needed + 8)
    n_words = rng.randint(max(lo, needed), max(hi, needed))
    pool = _filler_pool(prompt)
    for _ in range(n_words - needed):
        middle.insert(rng.randint(0, len(middle)), rng.choice(pool))
    words = head + middle + tail
    n_parts = by_type.get("parts", {}).get("n", 1)
    for gap in sorted(rng.sample(range(1, len(words)), min(n_parts - 1, len(words) - 1)), reverse=True):
        words.insert(gap, SEP)
    return words


def satisfying_response(prompt: dict, rng: random.Random, tries: int = 200) -> list[str]:
    """A response (word list) that satisfies every rubric of the prompt; ValueError if none is found."""
    for _ in range(tries):
        words = _construct(prompt, rng)
        if all(passes(r, words) for r in prompt["rubrics"]):
            return words
    raise ValueError(f"no satisfying response found for prompt {prompt.get('id', '?')!r} "
                     f"(inconsistent rubrics: {[r['description'] for r in prompt['rubrics']]})")


# ----------------------------------------------------------------------------- prompts and splits
def _sample_rubrics(topic: str, rng: random.Random, types: tuple[str, ...] | None = None,
                    k_range: tuple[int, int] = (3, 6)) -> list[dict]:
    """K in k_range distinct rubric types (of `types`, default all); every word argument is a distinct word of the
    topic (or a name)."""
    allowed = sorted(types or CHECKERS)
    types = rng.sample(allowed, rng.randint(min(k_range[0], len(allowed)), min(k_range[1], len(allowed))))
    words = iter(rng.sample(TOPICS[topic], len(TOPICS[topic])))
    rubrics = []
    for rubric_type in types:
        if rubric_type in ("starts_with", "ends_with", "include") and "lowercase" not in types and rng.random() < 0.15:
            args = {"word": rng.choice(NAMES)}
        elif rubric_type in ("starts_with", "ends_with", "include", "exclude"):
            args = {"word": next(words)}
        elif rubric_type == "count":
            args = {"word": next(words), "n": rng.randint(2, 3)}
        elif rubric_type == "order":
            args = {"first": next(words), "second": next(words)}
        elif rubric_type == "length":
            lo = rng.randint(6, 14)
            args = {"lo": lo, "hi": lo + rng.randint(2, 5)}
        elif rubric_type == "parts":
            args = {"n": rng.randint(2, 4)}
        else:
            args = {}
        rubrics.append(make_rubric(rubric_type, **args))
    return rubrics


def make_prompt(rng: random.Random, prompt_id: str = "p", types: tuple[str, ...] | None = None,
                k_range: tuple[int, int] = (3, 6)) -> dict | None:
    """One random prompt with satisfiable rubrics (None when the draw is inconsistent: resample)."""
    topic = rng.choice(sorted(TOPICS))
    rubrics = _sample_rubrics(topic, rng, types, k_range)
    text = " ".join([INTRO.format(topic=topic)] + [r["description"] for r in rubrics])
    prompt = {"id": prompt_id, "prompt": text, "rubrics": rubrics, "topic": topic,
              "combo": "+".join(sorted(r["type"] for r in rubrics))}
    try:
        satisfying_response(prompt, rng, tries=20)    # a consistent set succeeds on the first draw
    except ValueError:
        return None
    return prompt


def has_held_out_pair(prompt: dict) -> bool:
    types = {r["type"] for r in prompt["rubrics"]}
    return any(a in types and b in types for a, b in HELD_OUT_PAIRS)


def make_splits(seed: int = 0, n_train: int = 4000, n_val: int = 128, n_test: int = 256, n_unseen: int = 256,
                types: tuple[str, ...] | None = None, k_range: tuple[int, int] = (3, 6)) -> dict[str, list[dict]]:
    """Deterministic, disjoint splits: {"train", "val", "test", "test_unseen_combos"} -> list of prompts; `types` and
    `k_range` restrict the rubrics (REGIMES; the default draws are those of every other split of the project).

    >>> splits = make_splits(seed=0, n_train=20, n_val=4, n_test=4, n_unseen=4)
    >>> [len(splits[name]) for name in ("train", "val", "test", "test_unseen_combos")]
    [20, 4, 4, 4]
    """
    rng = random.Random(seed)
    seen_texts: set[str] = set()
    seen, unseen = [], []
    while len(seen) < n_test + n_val + n_train or len(unseen) < n_unseen:
        prompt = make_prompt(rng, types=types, k_range=k_range)
        if prompt is None or prompt["prompt"] in seen_texts:
            continue
        seen_texts.add(prompt["prompt"])
        bucket = unseen if has_held_out_pair(prompt) else seen
        if len(bucket) < (n_unseen if bucket is unseen else n_test + n_val + n_train):
            bucket.append(prompt)
    named = {"test": seen[:n_test], "val": seen[n_test:n_test + n_val], "train": seen[n_test + n_val:],
             "test_unseen_combos": unseen}
    return {name: [dict(p, id=f"{name}-{i:05d}") for i, p in enumerate(ps)] for name, ps in named.items()}


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
    kind, args = rubric["type"], rubric["args"]
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
    kind, args = rubric["type"], rubric["args"]
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


# ----------------------------------------------------------------------------- token relevance labels
def relevance_pair(rubric: dict, words: list[str], rng: random.Random, others: list[dict] = ()):
    """The minimal pair of a response for one rubric: (edited words or None, labels on `words` + EOS).

    A passing response is violated, a failing one repaired; labels cover the response words plus one
    final end-of-sequence position, so "too short" can be blamed on the end of the response.
    """
    edited = (violate if passes(rubric, words) else repair)(rubric, words, rng, others)
    if edited is None:
        return None, [0] * (len(words) + 1)
    labels, _ = token_diff_labels(words + [SPECIAL_TOKENS["eos"]], edited + [SPECIAL_TOKENS["eos"]])
    return edited, labels


def minimal_pairs(prompts: list[dict], rng: random.Random, from_teacher: bool = False) -> Iterator[dict]:
    """Discriminator training data: one minimal pair per (prompt, rubric).

    Yields {"prompt_id", "rubric", "positive", "negative" (word lists), "positive_labels",
    "negative_labels" (0/1 per word plus a final entry for the end-of-sequence token)}. The positive
    satisfies the rubric, the negative violates it, and every other rubric has the same verdict on both.
    from_teacher=False starts from a response satisfying every rubric (the paper's recipe);
    from_teacher=True starts from a teacher response (closer to what a policy writes during RL).
    """
    for prompt in prompts:
        base = teacher_response(prompt, rng) if from_teacher else satisfying_response(prompt, rng)
        for rubric in prompt["rubrics"]:
            edited, _ = relevance_pair(rubric, base, rng, prompt["rubrics"])
            if edited is None:
                continue
            positive, negative = (base, edited) if passes(rubric, base) else (edited, base)
            eos = SPECIAL_TOKENS["eos"]
            positive_labels, negative_labels = token_diff_labels(positive + [eos], negative + [eos])
            yield {"prompt_id": prompt["id"], "rubric": rubric, "positive": positive, "negative": negative,
                   "positive_labels": positive_labels, "negative_labels": negative_labels}


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


# ----------------------------------------------------------------------------- tokenizer
def vocabulary() -> list[str]:
    """Every token of the task, specials first, then sorted: prompts, rubric descriptions, responses."""
    splitter = _pre_tokenizer()
    template_words = set()
    for template in [INTRO, *DESCRIPTIONS.values()]:
        text = re.sub(r"\{\w+\}", " ", template)
        template_words |= {piece for piece, _ in splitter.pre_tokenize_str(text)}
    words = set(TOPICS) | {w for ws in TOPICS.values() for w in ws} | set(FILLERS) | set(NAMES) | {SEP}
    numbers = {str(i) for i in range(MAX_WORDS + 1)}
    return list(SPECIAL_TOKENS.values()) + sorted(template_words | words | numbers)


def _pre_tokenizer():
    return pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation("isolated")])


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer over the whole task vocabulary; decode joins tokens with single spaces.

    >>> tok = build_tokenizer()
    >>> tok.decode(tok("boat ; Anna 3", add_special_tokens=False)["input_ids"])
    'boat ; Anna 3'
    """
    vocab = {token: i for i, token in enumerate(vocabulary())}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=SPECIAL_TOKENS["unk"]))
    backend.pre_tokenizer = _pre_tokenizer()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token=SPECIAL_TOKENS["pad"], bos_token=SPECIAL_TOKENS["bos"],
        eos_token=SPECIAL_TOKENS["eos"], unk_token=SPECIAL_TOKENS["unk"], sep_token=SPECIAL_TOKENS["sep"])


# ----------------------------------------------------------------------------- oracle relevance provider
def oracle_relevance(prompts: list[dict], response_ids: torch.Tensor, token_mask: torch.Tensor,
                     tokenizer, seed: int = 0) -> torch.Tensor:
    """Ground-truth relevance w from minimal modifications of each sampled response (RTT_SPEC §4).

    For every (response, rubric): a passing rubric is violated, a failing one repaired, by the minimal
    editor (other rubrics keep their verdicts) and the response's own tokens that the edit touches get 1.

    Shapes:
        response_ids  (B, G, T)     long  right-padded; one token per word, then EOS if emitted
        token_mask    (B, G, T)     bool  True on generated tokens including EOS
        returns       (B, G, K, T)  float32 in {0, 1}; 0 on padded tokens and padded rubrics
    """
    if response_ids.dim() != 3 or token_mask.shape != response_ids.shape or token_mask.dtype != torch.bool:
        raise ValueError(f"need response_ids (B, G, T) and a bool token_mask of the same shape, got "
                         f"{tuple(response_ids.shape)} and {token_mask.dtype} {tuple(token_mask.shape)}")
    if len(prompts) != response_ids.shape[0]:
        raise ValueError(f"{len(prompts)} prompts but response_ids has B = {response_ids.shape[0]}")
    b_size, g_size, t_size = response_ids.shape
    k_size = max(len(p["rubrics"]) for p in prompts)
    relevance = torch.zeros(b_size, g_size, k_size, t_size)                       # (B, G, K, T)
    for b, prompt in enumerate(prompts):
        for g in range(g_size):
            ids = response_ids[b, g][token_mask[b, g]].tolist()
            has_eos = bool(ids) and ids[-1] == tokenizer.eos_token_id
            words = tokenizer.convert_ids_to_tokens(ids[:-1] if has_eos else ids)
            for k, rubric in enumerate(prompt["rubrics"]):
                rng = random.Random(f"{seed}:{prompt['id']}:{k}:{' '.join(words)}")
                _, labels = relevance_pair(rubric, words, rng, prompt["rubrics"])
                labels = labels if has_eos else labels[:-1]                       # no EOS position to label
                relevance[b, g, k, :len(labels)] = torch.tensor(labels, dtype=torch.float32)
    return relevance.to(response_ids.device)


# ----------------------------------------------------------------------------- reward hacking
def repeats_a_rubric_word(prompt: dict, text: str, times: int = 3) -> bool:
    """Does the response repeat a word one of its rubrics names (include, start, end, order, count...) `times` or
    more times where no rubric asks for it? (A count rubric asking for n >= times copies asks for it.)"""
    words = text.split()
    named = {v for r in prompt["rubrics"] for key, v in r["args"].items() if key in ("word", "first", "second")}
    asked = {r["args"]["word"] for r in prompt["rubrics"] if r["type"] == "count" and r["args"]["n"] >= times}
    return any(words.count(word) >= times for word in named - asked)


# ----------------------------------------------------------------------------- the discriminator's examples
# Which diff labels can be recovered from ONE response (RTT_SPEC §4 trap 2; the table in data.py), by
# (rubric type, side). The others point at a random word (the filler that replaced a required word, the
# word a forbidden one replaced) or at one of several equivalent positions, so they cap the F1 of any model.
IDENTIFIABLE = {("starts_with", "positive"), ("starts_with", "negative"), ("ends_with", "positive"),
                ("ends_with", "negative"), ("include", "positive"), ("exclude", "negative"),
                ("lowercase", "negative"), ("order", "positive"), ("order", "negative")}


def rubric_world_examples(prompts: list[dict], tokenizer, seed: int = 0) -> list[dict]:
    """Minimal pairs of Rubric World (minimal_pairs) as token examples, both sides labelled.

    Two recipes per prompt: from a response meeting every rubric (the paper's), and from the imperfect
    teacher's response, whose pairs include responses that fail several rubrics at once, as RL samples do.
    Each example carries its rubric type, side ("positive" meets the rubric, "negative" violates it), recipe,
    whether its labels are identifiable from the response alone, and its words and rubric.
    """
    rng = random.Random(seed)
    eos = tokenizer.eos_token_id
    examples = []
    for recipe, from_teacher in (("satisfying", False), ("teacher", True)):
        for pair in minimal_pairs(prompts, rng, from_teacher=from_teacher):
            rubric = pair["rubric"]
            for side in ("positive", "negative"):
                words = pair[side]
                ids = tokenizer.convert_tokens_to_ids(words) + [eos]
                examples.append(make_example(rubric["description"], ids, pair[f"{side}_labels"], type=rubric["type"],
                                             violated=side == "negative", side=side, recipe=recipe, words=words,
                                             rubric=rubric, identifiable=(rubric["type"], side) in IDENTIFIABLE))
    return examples


def rubric_world_quote(rubric: dict, words: list[str]) -> str:
    """The greedy baseline's answer on Rubric World, written by a rule instead of an LLM (DEVIATION(8)):
    it quotes the words the rubric names, the capitalised words ("lowercase") or the ';' ("parts"), the whole
    response for "length", and answers "none" when nothing it would quote is present."""
    if rubric["type"] == "length":                     # DEVIATION(8): a rule writes what an LLM would quote
        return json.dumps({"relevance": "all"})
    named = [rubric["args"][key] for key in ("word", "first", "second") if key in rubric["args"]]
    if rubric["type"] == "lowercase":
        named = [w for w in words if w[:1].isupper()]
    elif rubric["type"] == "parts":
        named = [";"]
    quotes = sorted({w for w in named if w in words})
    return json.dumps({"relevance": "partial", "segments": quotes} if quotes else {"relevance": "none"})


def greedy_predictions(examples: list[dict], tokenizer) -> tuple[list[torch.Tensor], dict]:
    """Greedy-baseline labels as 0/1 scores for every example (a dropped, malformed answer scores 0 everywhere;
    the end-of-sequence token is never quoted), plus the parsing counts."""
    answers = [rubric_world_quote(e["rubric"], e["words"]) for e in examples]
    labels, stats = llm_labels.greedy_labels(answers, [" ".join(e["words"]) for e in examples], tokenizer)
    scores = []
    for quoted, example in zip(labels, examples):
        row = torch.zeros(len(example["response_ids"]))                          # (T_m,)
        row[:len(quoted or [])] = torch.tensor(quoted or [], dtype=torch.float32)
        scores.append(row)
    return scores, stats


def heatmap_example(model, tokenizer, seed: int = 0) -> dict:
    """One held-out prompt with a teacher response that breaks at least one rubric, and its relevance.

    Returns {"prompt", "tokens" (T), "rubrics" (K descriptions), "verdicts" (K bools), "weights" (K, T),
    "oracle" (K, T): the oracle's minimal-modification labels}.
    """
    rng = random.Random(seed)
    for prompt in make_splits(seed=0)["test"]:
        words = teacher_response(prompt, rng)
        verdicts = [passes(r, words) for r in prompt["rubrics"]]
        if not all(verdicts):
            break
    ids = torch.tensor([[tokenizer.convert_tokens_to_ids(words) + [tokenizer.eos_token_id]]])  # (1, 1, T)
    mask = torch.ones_like(ids, dtype=torch.bool)                                 # (1, 1, T)
    return {"prompt": prompt["prompt"], "tokens": words + [tokenizer.eos_token], "verdicts": verdicts,
            "rubrics": [r["description"] for r in prompt["rubrics"]],
            "weights": discriminator.relevance(model, tokenizer, [prompt], ids, mask)[0, 0],    # (K, T)
            "oracle": oracle_relevance([prompt], ids, mask, tokenizer)[0, 0]}  # (K, T)


if __name__ == "__main__":
    splits = make_splits(seed=0, n_train=200, n_val=8, n_test=8, n_unseen=8)
    print({name: len(ps) for name, ps in splits.items()})
    tokenizer = build_tokenizer()
    print("vocabulary size V =", len(tokenizer))
    rng = random.Random(0)
    for prompt in splits["test"][:3]:
        print("\n" + "=" * 100 + f"\n[{prompt['id']}] {prompt['prompt']}")
        words = satisfying_response(prompt, rng)
        print("satisfying:", " ".join(words))
        rubric = rng.choice(prompt["rubrics"])
        edited, labels = relevance_pair(rubric, words, rng, prompt["rubrics"])
        print(f"violating {rubric['type']!r}:", " ".join(edited))
        print("verdicts before / after:", [int(passes(r, words)) for r in prompt["rubrics"]], "/",
              [int(passes(r, edited)) for r in prompt["rubrics"]])
        _, edited_labels = token_diff_labels(words + ["<eos>"], edited + ["<eos>"])
        print("labels on satisfying side:", list(zip(words + ["<eos>"], labels)))
        print("labels on violating side: ", list(zip(edited + ["<eos>"], edited_labels)))
        print("teacher:", " ".join(teacher_response(prompt, rng)))
