"""
tasks/rubric_world.py — Rubric World: a CPU-sized instruction-following task with verifiable rubrics (the toy task).

Paper:    paper §4 (rubric-based instruction following, verifiable rubrics); METHOD.md §10 (the regime a toy
          task must be in: the start policy passes about half of the rubrics but few prompts fully).
Input:    a seed (splits), a prompt dict {"id", "prompt", "rubrics", "combo"}, responses as text or word lists
Output:   prompts with K = 3..6 rubrics each; rule checkers `CHECKERS`; a response that satisfies every rubric;
          the word-level tokenizer; the reward-hacking measure of the study (a rubric's word repeated unasked).

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

Minimal edits and the imperfect teacher (tasks/rubric_world_edits.py) build on this file; the discriminator's
labels built from those edits live in relevance/rubric_world_labels.py.

Demo:     python -m tasks.rubric_world     (three test prompts and a response that satisfies each)
"""

import random
import re
from typing import Callable

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

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
    seen = []
    unseen = []
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


# ----------------------------------------------------------------------------- reward hacking
def repeats_a_rubric_word(prompt: dict, text: str, times: int = 3) -> bool:
    """Does the response repeat a word one of its rubrics names (include, start, end, order, count...) `times` or
    more times where no rubric asks for it? (A count rubric asking for n >= times copies asks for it.)"""
    words = text.split()
    named = {v for r in prompt["rubrics"] for key, v in r["args"].items() if key in ("word", "first", "second")}
    asked = {r["args"]["word"] for r in prompt["rubrics"] if r["type"] == "count" and r["args"]["n"] >= times}
    return any(words.count(word) >= times for word in named - asked)


if __name__ == "__main__":
    splits = make_splits(seed=0, n_train=200, n_val=8, n_test=8, n_unseen=8)
    print({name: len(prompts) for name, prompts in splits.items()}, "| vocabulary size V =", len(build_tokenizer()))
    rng = random.Random(0)
    for prompt in splits["test"][:3]:
        words = satisfying_response(prompt, rng)
        print(f"\n[{prompt['id']}] {prompt['prompt']}\n  satisfying: {' '.join(words)}")
        print("  verdicts:", [int(passes(rubric, words)) for rubric in prompt["rubrics"]])
