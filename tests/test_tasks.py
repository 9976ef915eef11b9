"""registry.py: rubric datasets from JSONL / datasets (rows validated, errors naming the row), held-out splits."""
import json

import pytest

from tasks import rubric_world
from tasks import registry


def write_jsonl(path, rows):
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return str(path)


def test_load_rubric_dataset_reads_typed_and_llm_rubrics(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"id": "a", "prompt": "Write about boats.", "rubrics": ["The tone is formal.",
                                                                 {"type": "include", "args": {"word": "boat"},
                                                                  "description": "Use the word boat."}]},
        {"prompt": "Say hi.", "rubrics": [{"description": "Be brief."}]}])
    prompts = registry.load_rubric_dataset(path, checkers=rubric_world.CHECKERS)
    assert [p["id"] for p in prompts] == ["a", "2"]
    assert prompts[0]["rubrics"][0] == {"type": "llm", "args": {}, "description": "The tone is formal."}
    assert prompts[0]["rubrics"][1]["type"] == "include" and prompts[1]["rubrics"][0]["type"] == "llm"


@pytest.mark.parametrize("row,message", [
    ("not json", "row 1: not valid JSON"),
    ([1, 2], "row 1: expected an object"),
    ({"rubrics": ["x"]}, "row 1: needs a non-empty string 'prompt'"),
    ({"prompt": "p", "rubrics": []}, "row 1: needs a non-empty list 'rubrics'"),
    ({"prompt": "p", "rubrics": [{"type": "include", "args": {"word": "a"}}]},
     "rubric 0 needs a non-empty string 'description'"),
    ({"prompt": "p", "rubrics": [{"description": "d", "args": [1]}]}, "rubric 0 has 'args' that is not an object"),
    ({"prompt": "p", "rubrics": [{"description": "d", "type": "nonsense"}]}, "unknown checker type 'nonsense'"),
    ({"prompt": "p", "rubrics": [3]}, "rubric 0 must be an object or a string"),
])
def test_load_rubric_dataset_names_the_row_and_the_problem(tmp_path, row, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [row])
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        registry.load_rubric_dataset(path, checkers=rubric_world.CHECKERS)


def test_load_rubric_dataset_rejects_duplicate_ids_and_reads_saved_datasets(tmp_path):
    row = {"id": "x", "prompt": "p", "rubrics": ["d"]}
    with pytest.raises(ValueError, match="row 2: id 'x' already used by row 1"):
        registry.load_rubric_dataset(write_jsonl(tmp_path / "dup.jsonl", [row, row]))
    import datasets

    datasets.Dataset.from_list([{"prompt": "p", "rubrics": ["be kind"]}]).save_to_disk(str(tmp_path / "saved"))
    assert registry.load_rubric_dataset(str(tmp_path / "saved"))[0]["rubrics"][0]["description"] == "be kind"
