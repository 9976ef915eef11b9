"""experiments/study.py: paired differences on the same seeds, the best variant chosen on validation (never test)."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments"))
import study  # noqa: E402


def fake_run(directory, test, val, hacking):
    os.makedirs(directory)
    by_decoding = {"instruction_accuracy": test, "rubric_accuracy": test + 0.5, "per_type": {"include": test}}
    report = {"n_prompts": 2, "instruction_accuracy": test, "rubric_accuracy": test + 0.5,   # eval.evaluate's layout
              "greedy": by_decoding, "sampled": by_decoding}
    with open(os.path.join(directory, "summary.json"), "w") as f:
        json.dump({"final": report, "start": report, "collapse": None, "wall_seconds": 1.0}, f)
    with open(os.path.join(directory, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps({"step": s, "reward/frac_zero_std": 0.5, "hacking/repeated_rubric_word": hacking,
                                 "completions/mean_length": 10.0, "rubric/pass_rate": 0.5}) + "\n" for s in range(3))
    with open(os.path.join(directory, "evals.jsonl"), "w") as f:
        f.write(json.dumps({"step": 3, "instruction_accuracy": val}) + "\n")


def test_paired_differences_and_a_best_variant_chosen_on_validation(tmp_path):
    numbers = {"grpo-aon": [(0.20, 0.20), (0.30, 0.30)],                        # (test, validation) per seed
               "intra-disc": [(0.25, 0.10), (0.33, 0.12)],                      # best on test, worst on validation
               "rubric_group-disc": [(0.10, 0.40), (0.20, 0.44)]}
    for method, seeds in numbers.items():
        for seed, (test, val) in enumerate(seeds):
            fake_run(study.run_dir(str(tmp_path), "all", method, seed), test, val, hacking=0.1 * seed)
    args = type("Args", (), {"out": str(tmp_path), "seeds": 2})()
    runs = {"all": {m: [] for m in numbers}}
    table = study.aggregate(study.collect(runs, args))
    paired = table["all"]["intra-disc"]["paired"]["instruction_accuracy"]
    assert paired["mean"] == pytest.approx((0.05 + 0.03) / 2) and paired["n"] == 2
    assert "paired" not in table["all"]["grpo-aon"]
    assert study.best_variant(table) == "rubric_group-disc"                     # validation, not test
    assert table["all"]["grpo-aon"]["hacking_final"]["mean"] == pytest.approx(0.05)
    assert "| intra-disc | 2 |" in study.markdown(table)


def test_the_plan_asks_every_grouping_with_both_relevances_and_the_released_code():
    first = study.plan(None, quick=False)["all"]
    assert {f"{n}-{r}" for n in study.NORMS for r in ("disc", "uniform")} | {"grpo-aon", "released-code"} == set(first)
    later = study.plan("rubric_group-disc", quick=False)
    assert set(later) == {"all", "local", "global", "k3", "k6"}
    assert set(later["k6"]) == {"grpo-aon", "intra-disc", "rubric_group-disc"}
    assert "--norm" in first["released-code"] and "released_code" in first["released-code"]


def test_the_t_quantile_agrees_with_the_printed_table_and_bonferroni_widens_by_its_ratio():
    from compare_methods import T_975

    for df, printed in enumerate(T_975, start=1):
        assert study.t_quantile(0.975, df) == pytest.approx(printed, abs=5e-4)   # the table is rounded to 3 places
    assert study.t_quantile(0.995, 4) == pytest.approx(4.604, abs=5e-4)         # t_{0.995, 4} of standard tables
    stat = {"mean": 0.029, "ci95": 0.018, "n": 5}                                 # 95%: [0.011, 0.047], above 0
    table = {"all": {"grpo-aon": {}, **{f"v{i}": {"paired": {"instruction_accuracy": stat}} for i in range(11)}},
             "k3": {"grpo-aon": {}, "v0": {"paired": {"instruction_accuracy": stat}}}}
    verdicts = study.family_wise(table)
    eleven = verdicts["all"]["v0"]
    assert eleven["comparisons"] == 11 and eleven["verdict"] == "contains 0"
    assert eleven["ci_bonferroni"] == pytest.approx(0.018 * study.t_quantile(1 - 0.05 / 22, 4) / T_975[3])
    assert verdicts["k3"]["v0"]["verdict"] == "above 0"                          # one comparison: the 95% interval
    assert verdicts["k3"]["v0"]["ci_bonferroni"] == pytest.approx(0.018, abs=1e-5)
