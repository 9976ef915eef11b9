"""eval.py: accuracies against hand counts, the interval over prompts, JSONL scoring, checkpoints and the CLI."""
import json
import math
import statistics

import pytest
import torch

import eval as evaluation
from runs import files
from policies import loading
from policies import toy
from tasks import rubric_world
from rewards import RuleJudge
from tasks.rubric_world import make_rubric
from tiny_models import build_tiny_chat_model

JUDGE = RuleJudge(rubric_world.CHECKERS)
PROMPTS = [
    {"id": "p0", "prompt": "Write about the sea.", "rubrics": [make_rubric("starts_with", word="boat"),
                                                             make_rubric("exclude", word="fish")]},
    {"id": "p1", "prompt": "Write about the moon.", "rubrics": [make_rubric("ends_with", word="moon"),
                                                              make_rubric("lowercase"),
                                                              make_rubric("length", lo=2, hi=3)]},
]
ROWS = [  # verdicts by hand:                                    starts_with exclude | ends_with lowercase length
    {"id": "p0", "response": "boat on the sea"},                 # yes yes (all pass)
    {"id": "p0", "response": "a fish"},                          # no  no
    {"prompt": "Write about the sea.", "response": "boat fish"}, # yes no
    {"id": "p1", "response": "the old moon"},                    #                      yes yes yes (all pass)
    {"id": "p1", "response": "Anna saw the moon"},               #                      yes no  no
]


def test_score_responses_equals_a_hand_count():
    scored, groups = evaluation.group_rows(PROMPTS, ROWS)
    result = evaluation.accuracy_report(scored, groups, JUDGE)
    assert len(scored) == 2 and result["n_responses"] == 5
    assert result["instruction_accuracy"] == pytest.approx(2 / 5)                # responses passing every rubric
    assert result["rubric_accuracy"] == pytest.approx((2 + 0 + 1 + 3 + 1) / (2 + 2 + 2 + 3 + 3))  # micro: 7 / 12
    assert result["per_type"] == pytest.approx({"starts_with": 2 / 3, "exclude": 1 / 3, "ends_with": 1.0,
                                                "lowercase": 1 / 2, "length": 1 / 2})
    assert result["mean_words"] == pytest.approx((4 + 2 + 2 + 3 + 4) / 5)
    # the interval over the 2 prompts, by the delta-method formula of the reading card
    passed, total = [1.0, 1.0], [3.0, 2.0]
    ratio = sum(passed) / sum(total)
    se = math.sqrt(sum((p - ratio * n) ** 2 for p, n in zip(passed, total)) / 2) / statistics.mean(total)
    assert result["instruction_accuracy_ci95"] == pytest.approx([max(0, ratio - 1.959964 * se),
                                                                 min(1, ratio + 1.959964 * se)])


def test_interval_with_equal_weights_is_mean_plus_minus_1_96_standard_errors():
    per_prompt = [0.25, 0.5, 0.5, 0.75, 1.0, 0.0, 0.5, 0.25]
    mean, ci = evaluation.ratio_ci95(torch.tensor(per_prompt) * 4, torch.full((8,), 4.0))
    half = 1.959964 * statistics.stdev(per_prompt) / math.sqrt(len(per_prompt))
    assert mean == pytest.approx(statistics.mean(per_prompt))
    assert ci == pytest.approx([mean - half, mean + half])
    assert ci[0] < mean < ci[1]


def test_interval_is_clipped_and_degenerate_cases_are_defined():
    assert evaluation.ratio_ci95(torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0]), torch.ones(5))[1][0] == 0.0  # clipped
    assert evaluation.ratio_ci95(torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0]), torch.ones(5))[1][1] == 1.0
    assert evaluation.ratio_ci95(torch.tensor([3.0, 3.0]), torch.tensor([3.0, 3.0])) == (1.0, [1.0, 1.0])
    assert evaluation.ratio_ci95(torch.tensor([1.0]), torch.tensor([2.0])) == (0.5, [0.0, 1.0])  # one prompt
    with pytest.raises(ValueError, match="total"):
        evaluation.ratio_ci95(torch.tensor([1.0]), torch.tensor([0.0]))


@pytest.mark.parametrize("row, message", [
    ({"id": "p9", "response": "boat"}, "row 2: unknown prompt id 'p9'"),
    ({"prompt": "Write about rain.", "response": "boat"}, "row 2: prompt text"),
    ({"id": "p0"}, "row 2: needs a string field 'response'"),
    ({"id": "p0", "response": 3}, "needs a string field 'response'"),
    ({"response": "boat"}, "row 2: needs an 'id' or a 'prompt'"),
    (["p0", "boat"], "row 2: expected an object"),
])
def test_bad_rows_give_clear_errors(row, message):
    with pytest.raises(ValueError, match=message):
        evaluation.group_rows(PROMPTS, [ROWS[0], row])


def test_read_jsonl_names_the_bad_line(tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_text('{"id": "p0", "response": "boat"}\n\n{"id": "p1", "response": \n')
    with pytest.raises(ValueError, match=r"answers.jsonl:3: not valid JSON"):
        files.read_jsonl(str(path))


# ----------------------------------------------------------------------------- evaluate with a policy
class RecordingJudge:
    """Judges by a fixed rule on word counts and records every response it saw."""

    def __init__(self):
        self.seen = []

    def __call__(self, prompts, responses):
        scores = torch.zeros(len(prompts), len(responses[0]), max(len(p["rubrics"]) for p in prompts))
        for b, (prompt, group) in enumerate(zip(prompts, responses)):
            for g, text in enumerate(group):
                self.seen.append((prompt["id"], text))
                for k in range(len(prompt["rubrics"])):
                    scores[b, g, k] = 1.0 if (len(text.split()) + k) % 2 == 0 else -1.0
        return scores, torch.ones(scores.shape[0], scores.shape[2], dtype=torch.bool)


@pytest.fixture(scope="module")
def tiny_policy():
    tokenizer = rubric_world.build_tokenizer()
    return toy.build_toy_policy(tokenizer, seed=1).eval(), tokenizer


def test_evaluate_counts_every_response_once_and_matches_a_hand_count(tiny_policy):
    model, tokenizer = tiny_policy
    prompts = rubric_world.make_splits(seed=0, n_train=2, n_val=2, n_test=5, n_unseen=1)["test"]
    judge = RecordingJudge()
    result = evaluation.evaluate(model, tokenizer, prompts, judge, n_samples=3, max_new_tokens=5, max_batch_tokens=80)
    assert len(judge.seen) == 5 * 1 + 5 * 3                                      # greedy: 1 per prompt; sampled: 3
    assert result["n_prompts"] == 5
    assert result["greedy"]["n_responses"] == 5 and result["sampled"]["n_responses"] == 15
    assert result["instruction_accuracy"] == result["sampled"]["instruction_accuracy"]
    assert result["rubric_accuracy"] == result["sampled"]["rubric_accuracy"]
    n_rubrics = {p["id"]: len(p["rubrics"]) for p in prompts}
    sampled = judge.seen[5:]
    assert [pid for pid, _ in sampled] == [p["id"] for p in prompts for _ in range(3)]
    # rule: rubric k passes iff (words + k) is even; a response passes all only with a single rubric
    rubric_hits = sum(((len(t.split()) + k) % 2 == 0) for pid, t in sampled for k in range(n_rubrics[pid]))
    n_pairs = sum(n_rubrics[pid] for pid, _ in sampled)
    assert result["sampled"]["rubric_accuracy"] == pytest.approx(rubric_hits / n_pairs)
    assert result["sampled"]["instruction_accuracy"] == 0.0                        # every prompt has >= 3 rubrics
    assert result["sampled"]["mean_words"] == pytest.approx(sum(len(t.split()) for _, t in sampled) / 15)
    for mode in ("greedy", "sampled"):
        lo, hi = result[mode]["rubric_accuracy_ci95"]
        assert 0.0 <= lo <= result[mode]["rubric_accuracy"] <= hi <= 1.0


def test_evaluate_is_deterministic_for_a_seed_and_leaves_train_mode_alone(tiny_policy):
    model, tokenizer = tiny_policy
    prompts = rubric_world.make_splits(seed=1, n_train=2, n_val=2, n_test=6, n_unseen=1)["test"]
    judge = RuleJudge(rubric_world.CHECKERS)
    model.train()
    first = evaluation.evaluate(model, tokenizer, prompts, judge, n_samples=2, max_new_tokens=8, seed=5)
    assert model.training
    model.eval()
    assert evaluation.evaluate(model, tokenizer, prompts, judge, n_samples=2, max_new_tokens=8, seed=5) == first
    assert set(first["greedy"]) == {"instruction_accuracy", "instruction_accuracy_ci95", "rubric_accuracy",
                                    "rubric_accuracy_ci95", "per_type", "mean_words", "n_responses", "checker_errors"}
    with pytest.raises(ValueError, match="at least one prompt"):
        evaluation.evaluate(model, tokenizer, [], judge)


# ----------------------------------------------------------------------------- checkpoints and the CLI
def test_checkpoint_loading_from_a_train_checkpoint_and_clear_errors(tmp_path, tiny_policy):
    model, tokenizer = tiny_policy
    toy.save_policy(model, tokenizer, str(tmp_path / "start"))
    trained = {k: v + 0.5 for k, v in model.state_dict().items()}
    torch.save({"policy": trained, "step": 1, "config": {"policy": str(tmp_path / "start")}}, tmp_path / "ckpt.pt")
    loaded, _, config = loading.load_checkpoint_policy(str(tmp_path / "ckpt.pt"))
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in trained.items())
    assert config == {"policy": str(tmp_path / "start")}
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        loading.load_checkpoint_policy(str(tmp_path / "junk.pt"))
    torch.save({"policy": {"lm_head.weight": torch.zeros(2, 2)}, "step": 1, "config": {"policy": str(tmp_path / "start")}},
               tmp_path / "other.pt")
    with pytest.raises(ValueError, match="does not fit its policy"):
        loading.load_checkpoint_policy(str(tmp_path / "other.pt"))
    torch.save({"policy": {}, "step": 1, "config": {"policy": str(tmp_path)}}, tmp_path / "nopolicy.pt")
    with pytest.raises(ValueError, match="cannot load a policy"):
        loading.load_checkpoint_policy(str(tmp_path / "nopolicy.pt"))           # a dir without a policy
    with pytest.raises(SystemExit, match="cannot evaluate: cannot read checkpoint"):
        evaluation.main(["--checkpoint", str(tmp_path / "junk.pt")])


def test_cli_scores_a_responses_file_and_writes_json(tmp_path):
    prompts = rubric_world.make_splits(seed=0)["val"][:2]
    rows = [{"id": p["id"], "response": " ".join(rubric_world.satisfying_response(p, __import__("random").Random(0)))}
            for p in prompts] + [{"id": prompts[0]["id"], "response": ""}]
    (tmp_path / "answers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out" / "scores.json"
    evaluation.main(["--responses", str(tmp_path / "answers.jsonl"), "--split", "val", "--json", str(out)])
    written = json.loads(out.read_text())
    assert written["n_prompts"] == 2 and written["rule"]["responses"]["n_responses"] == 3 and written["split"] == "val"
    assert written["instruction_accuracy"] == pytest.approx(2 / 3)               # the empty answer fails all
    assert not list(out.parent.glob("*.tmp*"))
    with pytest.raises(SystemExit, match="unknown split"):
        evaluation.main(["--split", "dev"])


def test_cli_evaluates_a_saved_policy(tmp_path, tiny_policy):
    model, tokenizer = tiny_policy
    toy.save_policy(model, tokenizer, str(tmp_path / "policy"))
    out = tmp_path / "eval.json"
    evaluation.main(["--policy", str(tmp_path / "policy"), "--split", "val", "--samples", "1",
                     "--max_new_tokens", "3", "--json", str(out)])
    written = json.loads(out.read_text())
    for mode in ("greedy", "sampled"):
        assert written["rule"][mode]["n_responses"] == written["n_prompts"] == 128
        assert {"instruction_accuracy", "rubric_accuracy", "per_type"} <= set(written["rule"][mode])


def test_checkpoint_of_a_real_policy_is_reloaded_with_its_own_family(tmp_path):
    """A train.py ckpt.pt of a non-toy policy comes back as that model class (here Qwen2), with its weights."""
    model, tokenizer = build_tiny_chat_model("qwen2", seed=1)
    model.save_pretrained(tmp_path / "qwen")
    tokenizer.save_pretrained(tmp_path / "qwen")
    state = {name: value + 0.01 for name, value in model.state_dict().items()}  # "trained" weights
    torch.save({"policy": state, "step": 1, "config": {"policy": str(tmp_path / "qwen")}}, tmp_path / "ckpt.pt")
    loaded, loaded_tokenizer, _ = loading.load_checkpoint_policy(str(tmp_path / "ckpt.pt"))
    assert type(loaded).__name__ == "Qwen2ForCausalLM" and loaded_tokenizer.eos_token == "<|im_end|>"
    assert all(torch.equal(loaded.state_dict()[name], value) for name, value in state.items())


AFTER_ROWS = [  # the same prompts and group sizes as ROWS, other responses
    {"id": "p0", "response": "boat on the sea"},                 # yes yes
    {"id": "p0", "response": "boat and sand"},                   # yes yes
    {"id": "p0", "response": "a fish"},                          # no  no
    {"id": "p1", "response": "Anna saw the moon"},               #                      yes no  no
    {"id": "p1", "response": "a red moon"},                      #                      yes yes yes
]


def items_of(rows):
    scored, groups = evaluation.group_rows(PROMPTS, rows)
    return evaluation.item_rows(scored, {"responses": groups}, {"rule": JUDGE})


def test_compare_is_the_difference_of_the_two_reports_with_a_paired_interval():
    report = evaluation.compare_items(items_of(ROWS), items_of(AFTER_ROWS))["rule"]["responses"]
    reports = [evaluation.accuracy_report(*evaluation.group_rows(PROMPTS, rows), JUDGE) for rows in (ROWS, AFTER_ROWS)]
    for level in ("instruction_accuracy", "rubric_accuracy"):
        assert report[level] == pytest.approx(reports[1][level] - reports[0][level])
        assert report["before_" + level] == reports[0][level] and report["after_" + level] == reports[1][level]
        assert report["before_" + level + "_ci95"] == reports[0][level + "_ci95"]
    # by hand: per prompt differences in passes (p0: 2 − 1, p1: 1 − 1 responses passing all) over totals (3, 2)
    differences, totals = [1.0, 0.0], [3.0, 2.0]
    delta = sum(differences) / sum(totals)
    se = math.sqrt(sum((d - delta * n) ** 2 for d, n in zip(differences, totals)) / 2) / statistics.mean(totals)
    assert report["instruction_accuracy"] == pytest.approx(1 / 5)
    assert report["instruction_accuracy_ci95"] == pytest.approx([delta - 1.959964 * se, delta + 1.959964 * se])
    # rubric level: p0 passes 3 → 4 of 6 pairs, p1 4 → 4 of 6
    assert report["rubric_accuracy"] == pytest.approx(1 / 12)
    same = evaluation.compare_items(items_of(ROWS), items_of(ROWS))["rule"]["responses"]
    assert same["instruction_accuracy"] == 0 and same["instruction_accuracy_ci95"] == [0.0, 0.0]


def test_compare_refuses_files_of_other_prompts_rubrics_or_response_counts(tmp_path):
    before = items_of(ROWS)
    with pytest.raises(ValueError, match="different prompts"):
        evaluation.compare_items(before, before[:1])
    other_rubrics = json.loads(json.dumps(before))
    other_rubrics[1]["rubrics"] = ["lowercase"]
    with pytest.raises(ValueError, match="'p1' has other rubrics"):
        evaluation.compare_items(before, other_rubrics)
    with pytest.raises(ValueError, match="different numbers of responses responses"):
        evaluation.compare_items(before, items_of(ROWS[:4] + ROWS[:1]))
    files.write_jsonl(str(tmp_path / "before.jsonl"), before)
    files.write_jsonl(str(tmp_path / "answers.jsonl"), ROWS)
    with pytest.raises(SystemExit, match="takes two --items files"):
        evaluation.main(["--compare", str(tmp_path / "before.jsonl")])
    with pytest.raises(SystemExit, match="not eval.py --items files"):
        evaluation.main(["--compare", str(tmp_path / "before.jsonl"), str(tmp_path / "answers.jsonl")])
    out = tmp_path / "compare.json"
    evaluation.main(["--compare", str(tmp_path / "before.jsonl"), str(tmp_path / "before.jsonl"), "--json", str(out)])
    assert json.loads(out.read_text())["rule"]["responses"]["rubric_accuracy"] == 0
    files.write_jsonl(str(tmp_path / "after_first.jsonl"), items_of(AFTER_ROWS)[:1])   # an evaluation with --limit 1
    with pytest.raises(SystemExit, match="different prompts"):
        evaluation.main(["--compare", str(tmp_path / "before.jsonl"), str(tmp_path / "after_first.jsonl")])
    evaluation.main(["--compare", str(tmp_path / "before.jsonl"), str(tmp_path / "after_first.jsonl"), "--limit", "1",
                     "--json", str(out)])
    assert json.loads(out.read_text())["rule"]["responses"]["instruction_accuracy"] == pytest.approx(2 / 3 - 1 / 3)
