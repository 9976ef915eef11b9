"""
relevance/rubric_world_labels.py — the discriminator's labels on Rubric World: minimal pairs, oracle relevance,
identifiable labels, and the greedy-quote baseline.

Paper:    the discriminator's training data (appendix: positive response, minimal modification per rubric, token
          diff) and the greedy-quote baseline; METHOD.md §4.
Input:    Rubric World prompts (tasks/rubric_world.py), responses as word lists or token ids
Output:   minimal pairs with token_diff_labels on BOTH sides (discriminator.py), the discriminator's examples
          (tagged identifiable or not), the oracle relevance w (B, G, K, T), the greedy baseline's scores, and a
          heat-map example.

Labels.   The edits come from tasks/rubric_world_edits.py. token_diff_labels() labels the tokens that differ
          (difflib on token ids; position by position when that labels fewer, e.g. a swap of neighbours) 1 on
          BOTH sides. A deletion leaves nothing to point at on the shorter side: we label the token right after
          the gap there (the end-of-sequence token when the gap is at the end; the last token when there is none).
          Which labels a model can recover from ONE response alone ("identifiable", METHOD.md §4):

          type         violating edit (preferred first)           label on the satisfying side   on the violating side
          starts_with  replace the first word                     yes (first word)               yes (first word)
          ends_with    replace the last word                      yes (last word)                yes, if the model
                                                                                                 sees EOS
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

Deviations (numbered as in METHOD.md §9, tagged `# DEVIATION(n)` in the code):
  5. The paper's positives and minimal modifications are written by an LLM; here they are constructed
     by code, so the labels are exact (up to the identifiability limits in the table above).
  8. The greedy baseline's "LLM" is a rule that quotes every occurrence of the words a rubric names.

Demo:     python -m relevance.rubric_world_labels     (prompts, a satisfying response, a violated one, its labels)
"""

import json
import random
from typing import Iterator

import torch

from discriminator import make_example, relevance, token_diff_labels   # the paper's labels: tokens an edit touches
from relevance.llm_labels import greedy_labels
from tasks.rubric_world import SPECIAL_TOKENS, make_splits, passes, satisfying_response
from tasks.rubric_world_edits import repair, teacher_response, violate


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


# ----------------------------------------------------------------------------- oracle relevance provider
def oracle_relevance(prompts: list[dict], response_ids: torch.Tensor, token_mask: torch.Tensor,
                     tokenizer, seed: int = 0) -> torch.Tensor:
    """Ground-truth relevance w from minimal modifications of each sampled response (METHOD.md §4).

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


# ----------------------------------------------------------------------------- the discriminator's examples
# Which diff labels can be recovered from ONE response (METHOD.md §4 trap 2; the table at the top of this file), by
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
    labels, stats = greedy_labels(answers, [" ".join(e["words"]) for e in examples], tokenizer)
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
            "weights": relevance(model, tokenizer, [prompt], ids, mask)[0, 0],               # (K, T)
            "oracle": oracle_relevance([prompt], ids, mask, tokenizer)[0, 0]}  # (K, T)


if __name__ == "__main__":
    splits = make_splits(seed=0, n_train=200, n_val=8, n_test=8, n_unseen=8)
    print({name: len(ps) for name, ps in splits.items()})
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
