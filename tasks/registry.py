"""
tasks/registry.py — the prompts-with-rubrics a run trains and evaluates on, and the judge that scores them.

Paper:    paper §4 (rubric-based instruction-following data; rule checkers where a rubric is verifiable by code,
          an LLM judge answering YES/NO elsewhere); METHOD.md §3 step 2 and §8.
Data:     "rubric_world" (the toy task, its own splits; "rubric_world:<regime>" restricts its rubrics), "ifeval" (the
          541 IFEval prompts), "ifbench" (IFBench's 300 test prompts; both judged by if-verifiable's checkers),
          "ifeval_train" (4,000 prompts in IFEval's style that are not IFEval's: tasks/ifeval_train.py),
          or a JSONL file / saved `datasets` directory / `datasets` name with rows
          {"prompt": str, "rubrics": [{"description", optional "type", "args"} or a plain string], optional "id"}.
          A real dataset is split once by a fixed seed into train / val / test (held_out_splits).
Judges:   "rule" (Rubric World's checkers), "ifeval", "ifbench" (the benchmarks'), "llm" (a local LM, strict YES/NO),
          "hybrid" (checkers where a rubric's "type" has one, the LLM elsewhere). Every judge is called as
          judge(prompts, responses) -> (scores (B, G, K) in {+1, −1}, rubric_mask (B, K)).
"""

import json
import os
from functools import lru_cache

import torch

from rewards import HybridJudge, LLMJudge, RuleJudge
from tasks import ifbench, ifeval, ifeval_train, rubric_world

BENCHMARKS = {"ifeval": ifeval, "ifbench": ifbench}               # the paper's benchmarks: prompts and checkers
DATA_JUDGES = {"rubric_world": "rule", "ifeval": "ifeval", "ifbench": "ifbench",
               "ifeval_train": "ifeval"}                          # each dataset's own judge
HELD_OUT_BENCHMARKS = {"ifeval_train": ("ifeval", "ifbench")}     # a training set kept apart from these benchmarks
JUDGES = ("rule", "ifeval", "ifbench", "llm", "hybrid")
LLM_JUDGES = ("llm", "hybrid")                                       # the judges that ask a judge model


def held_out_splits(prompts: list[dict], seed: int = 0) -> dict[str, list[dict]]:
    """train / val / test of a real rubric dataset: a fixed shuffle, 10 % (1..64 prompts) each for val and test."""
    if len(prompts) < 3:
        raise ValueError(f"need at least 3 prompts to hold out validation and test prompts, got {len(prompts)}")
    order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(seed)).tolist()
    shuffled = [prompts[i] for i in order]
    n_held = min(64, max(1, len(prompts) // 10))
    return {"test": shuffled[:n_held], "val": shuffled[n_held:2 * n_held], "train": shuffled[2 * n_held:]}


@lru_cache(maxsize=4)
def epoch_order(n_prompts: int, seed: int, epoch: int) -> list[int]:
    return torch.randperm(n_prompts, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()


def prompt_batch(prompts: list[dict], step: int, batch_size: int, seed: int) -> list[dict]:
    """The B prompts of a step: a fixed permutation per epoch, so a resumed run sees the same data."""
    batch = []
    for i in range(step * batch_size, (step + 1) * batch_size):
        epoch, position = divmod(i, len(prompts))
        batch.append(prompts[epoch_order(len(prompts), seed, epoch)[position]])
    return batch


def load_splits(data: str) -> dict[str, list[dict]]:
    """Prompt splits: Rubric World's own (with held-out rubric combinations; "rubric_world:<regime>" restricts its
    rubrics, rubric_world.REGIMES), or a real dataset (a benchmark, a rubric file) held out by seed."""
    if data == "rubric_world":
        return rubric_world.make_splits(seed=0)
    if data.startswith("rubric_world:"):
        regime = data.split(":", 1)[1]
        if regime not in rubric_world.REGIMES:
            raise ValueError(f"unknown Rubric World regime {regime!r}; choose one of {', '.join(rubric_world.REGIMES)}")
        return rubric_world.make_splits(seed=0, n_unseen=0, **rubric_world.REGIMES[regime])
    if data == "ifeval_train":                                    # built on first use and cached
        return held_out_splits(ifeval_train.load_or_build())
    return held_out_splits(BENCHMARKS[data].load_prompts() if data in BENCHMARKS else load_rubric_dataset(data))


def evaluation_task(data: str, split: str, judge: str, judge_llm: tuple | None = None,
                    data_file: str = "") -> tuple[list[dict], dict]:
    """The prompts of a split and the judges that score them, {name: judge}: a benchmark (IFEval, IFBench) strict
    and loose, its own two tests, any other judge by its kind. Split "all" is every prompt of a benchmark."""
    if data in BENCHMARKS:
        prompts = BENCHMARKS[data].load_prompts(data_file or None)
        splits = {"all": prompts, **(held_out_splits(prompts) if len(prompts) >= 3 else {})}
    else:
        splits = load_splits(data)
    if split not in splits:
        raise ValueError(f"unknown split {split!r} for --data {data}; choose one of {', '.join(splits)}")
    if not judge:
        raise ValueError(f"--data {data} needs a judge ({' | '.join(JUDGES)})")
    if judge in BENCHMARKS:
        return splits[split], {"strict": make_judge(judge), "loose": make_judge(judge, loose=True)}
    return splits[split], {judge: make_judge(judge, judge_llm)}


def data_checkers(data: str) -> dict:
    """The rule checkers of a dataset's rubrics ({type: check(response, **args) -> bool}): IFEval's for ifeval and
    ifeval_train, Rubric World's for rubric_world, both for a rubric file (a rubric without a checker is an LLM
    judge's)."""
    if data in BENCHMARKS:
        return BENCHMARKS[data].checkers()
    if data == "ifeval_train":
        return ifeval.checkers()
    return dict(rubric_world.CHECKERS) if is_rubric_world(data) else {**rubric_world.CHECKERS, **ifeval.checkers()}


def default_max_new_tokens(data: str) -> int:
    """The response length cap a dataset's prompts need: Rubric World's longest accepted answer + EOS, else 256."""
    return rubric_world.MAX_NEW_TOKENS if is_rubric_world(data) else 256


def is_rubric_world(data: str) -> bool:
    """Rubric World or one of its regimes ("rubric_world:local", ...)."""
    return data == "rubric_world" or data.startswith("rubric_world:")


def batch_metrics(data: str, prompts: list[dict], texts: list[list[str]]) -> dict:
    """What a task logs about a batch of sampled responses beyond the rewards: on Rubric World, the share that
    repeat a rubric's word 3+ times where no rubric asks for it (the token term's reward hacking)."""
    if not is_rubric_world(data):
        return {}
    repeats = [rubric_world.repeats_a_rubric_word(p, t) for p, group in zip(prompts, texts) for t in group]
    return {"hacking/repeated_rubric_word": sum(repeats) / len(repeats)}


def make_judge(kind: str, judge_llm: tuple | None = None, loose: bool = False):
    """judge(prompts, responses) -> (rubric scores (B, G, K) in {+1, −1}, rubric_mask (B, K)) of one JUDGES kind
    (a benchmark's judge strict, or loose with `loose`). The llm and hybrid judges ask `judge_llm`, a loaded
    (model, tokenizer) pair (policies.loading.load_policy loads one)."""
    if kind == "rule":
        return RuleJudge(rubric_world.CHECKERS)
    if kind in BENCHMARKS:
        return ifeval.IFEvalJudge(loose) if kind == "ifeval" else ifbench.IFBenchJudge(loose)
    if kind not in LLM_JUDGES:
        raise ValueError(f"unknown judge {kind!r}; choose one of {', '.join(JUDGES)}")
    if judge_llm is None:
        raise ValueError(f"the {kind} judge needs a judge model (--judge_model: a causal LM directory or hub id)")
    llm_judge = LLMJudge(*judge_llm)
    return llm_judge if kind == "llm" else HybridJudge({**rubric_world.CHECKERS, **ifeval.checkers()}, llm_judge)


# ----------------------------------------------------------------------------- your rubric datasets
# Real rubric data: one row per prompt, {"prompt": str, "rubrics": [rubric, ...], optional "id": str}. A rubric is
# {"description": str, optional "type": checker id, optional "args": dict}, or just its description as a string.
# A rubric without a type (or with type "llm") is judged by an LLM (rewards.HybridJudge); one with a type goes to
# the rule checker of that name.
def _rubric_from_row(rubric, where: str, k: int, checkers: dict | None) -> dict:
    """One validated rubric dict; ValueError naming the row, the rubric and the problem."""
    if isinstance(rubric, str):
        rubric = {"description": rubric}
    if not isinstance(rubric, dict):
        raise ValueError(f"{where}: rubric {k} must be an object or a string, got {type(rubric).__name__}")
    description = rubric.get("description")
    rubric_type = rubric.get("type") or "llm"
    args = rubric.get("args") if rubric.get("args") is not None else {}
    if not isinstance(description, str) or not description.strip():
        raise ValueError(f"{where}: rubric {k} needs a non-empty string 'description' (the criterion in words)")
    if not isinstance(rubric_type, str):
        raise ValueError(f"{where}: rubric {k} has a 'type' that is not a string: {rubric_type!r}")
    if not isinstance(args, dict):
        raise ValueError(f"{where}: rubric {k} has 'args' that is not an object: {args!r}")
    if checkers is not None and rubric_type != "llm" and rubric_type not in checkers:
        raise ValueError(f"{where}: rubric {k} has unknown checker type {rubric_type!r}; known: {sorted(checkers)} "
                         "(or leave 'type' out for an LLM-judged rubric)")
    return {"type": rubric_type, "args": args, "description": description.strip()}


def rubric_prompt_from_row(row, index: int, source: str, checkers: dict | None = None) -> dict:
    """One dataset row -> a prompt dict {"id", "prompt", "rubrics"}; ValueError naming the row and the problem."""
    where = f"{source} row {index}"
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected an object with 'prompt' and 'rubrics', got {type(row).__name__}")
    prompt = row.get("prompt")
    rubrics = row.get("rubrics")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"{where}: needs a non-empty string 'prompt' (has fields {sorted(row)})")
    if not isinstance(rubrics, list) or not rubrics:
        raise ValueError(f"{where}: needs a non-empty list 'rubrics', got {type(rubrics).__name__}")
    prompt_id = str(row["id"]) if row.get("id") is not None else str(index)
    return {"id": prompt_id, "prompt": prompt,
            "rubrics": [_rubric_from_row(rubric, where, k, checkers) for k, rubric in enumerate(rubrics)]}


def load_rubric_dataset(path_or_name: str, split: str | None = None, checkers: dict | None = None) -> list[dict]:
    """Prompt dicts from a JSONL file, a saved `datasets` directory, or a `datasets` name (split default "train").

    Rows are validated (see rubric_prompt_from_row); with `checkers`, every typed rubric must name one of them.
    Rows are numbered from 1 in error messages (the JSONL line number for a file).
    """
    looks_like_a_file = path_or_name.endswith((".jsonl", ".json"))          # not a `datasets` name
    if looks_like_a_file and not os.path.exists(path_or_name):
        raise ValueError(f"{path_or_name}: no such file or directory")
    if os.path.isfile(path_or_name):
        rows = []
        with open(path_or_name) as f:
            for line_no, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        rows.append((line_no, json.loads(line)))
                    except json.JSONDecodeError as error:
                        raise ValueError(f"{path_or_name} row {line_no}: not valid JSON ({error.msg})") from error
    else:
        import datasets

        if os.path.isdir(path_or_name):
            loaded = datasets.load_from_disk(path_or_name)
            table = loaded[split or "train"] if isinstance(loaded, datasets.DatasetDict) else loaded
        else:
            table = datasets.load_dataset(path_or_name, split=split or "train")
        rows = list(enumerate(table, start=1))
    prompts = [rubric_prompt_from_row(row, index, path_or_name, checkers) for index, row in rows]
    seen = {}
    for (index, _), prompt in zip(rows, prompts):
        if prompt["id"] in seen:
            raise ValueError(f"{path_or_name} row {index}: id {prompt['id']!r} already used by row "
                             f"{seen[prompt['id']]}")
        seen[prompt["id"]] = index
    if not prompts:
        raise ValueError(f"{path_or_name}: no rows")
    return prompts
