"""build.py and checker_edits.py: discriminators are cached by what they were built from (the toy one,
and a real policy's on its dataset), minimal edits are found by checker search, and mismatches are refused."""

import json
import os

import pytest
import torch

from relevance import build
from relevance import checker_edits
from tasks import rubric_world
import train
from tiny_models import build_tiny_chat_model, write_policy_and_rubrics


def test_load_or_train_caches_by_settings(tmp_path, monkeypatch, capsys):
    small = rubric_world.make_splits(seed=0, n_train=8, n_val=1, n_test=1, n_unseen=1)
    monkeypatch.setattr(rubric_world, "make_splits", lambda seed=0: small)
    settings = {"hidden": 16, "layers": 1, "heads": 2, "steps": 3, "batch_size": 4}
    model, tok = build.load_or_train_toy_discriminator(cache_dir=str(tmp_path / "d"), settings=settings)
    assert "toy discriminator" in capsys.readouterr().out
    again, _ = build.load_or_train_toy_discriminator(cache_dir=str(tmp_path / "d"), settings=settings)
    assert capsys.readouterr().out == ""                                         # loaded, not retrained
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    build.load_or_train_toy_discriminator(cache_dir=str(tmp_path / "d"), settings={**settings, "steps": 4})
    assert "toy discriminator" in capsys.readouterr().out                        # other settings: retrained
    with pytest.raises(ValueError, match="unknown discriminator settings"):
        build.load_or_train_toy_discriminator(cache_dir=str(tmp_path / "d"), settings={"step": 3})



# ----------------------------------------------------------------------------- a discriminator for a real policy

def test_checker_search_labels_the_token_that_decides_and_counts_the_rest():
    _, tok = build_tiny_chat_model("qwen2")
    eos = tok.eos_token_id
    ids = tok("the boat sails near the harbour", add_special_tokens=False)["input_ids"] + [eos]
    boat = tok(" boat", add_special_tokens=False)["input_ids"]
    assert len(boat) == 1 and boat[0] in ids
    prompt = {"id": "p", "rubrics": [
        rubric_world.make_rubric("include", word="boat") | {"description": "Include 'boat'."},
        {"type": "length", "args": {"lo": 1, "hi": 30}, "description": "Use 1 to 30 words."},
        {"type": "crashes", "args": {}, "description": "A checker that raises."},
        {"type": "llm", "args": {}, "description": "Be friendly."}]}
    checkers = {"include": lambda text, word: word in text.split(), "length": lambda text, lo, hi: lo <= len(text.split()) <= hi,
                "crashes": lambda text: 1 / 0}
    examples, stats = checker_edits.checker_examples([prompt], [[ids, [eos]]], tok, checkers, max_calls=300)
    include = [e for e in examples if e["type"] == "include"]
    assert [e["side"] for e in include] == ["positive", "negative"] and all(e["scope"] == "tokens" for e in include)
    assert include[0]["response_ids"] == ids and include[0]["identifiable"]      # the deleted word, on its side
    assert [i for i, y in zip(ids, include[0]["labels"]) if y] == boat           # only "boat" is relevant
    (length,) = [e for e in examples if e["type"] == "length"]                  # no small edit flips 1..30 words
    assert length["scope"] == "whole" and set(length["labels"]) == {1.0}
    assert stats["include"] == {"pairs": 2, "calls": stats["include"]["calls"], "token_labels": 1, "empty": 1}
    assert stats["length"]["whole"] == 1 and 50 < stats["length"]["calls"] <= 300   # every candidate tried
    assert stats["crashes"]["crashed"] == 1 and stats["llm"]["no_checker"] == 2


def test_an_absence_is_labelled_by_what_putting_it_in_takes_several_words_or_several_times():
    _, tok = build_tiny_chat_model("qwen2")
    eos = tok.eos_token_id
    ids = tok("the boat sails near the harbour", add_special_tokens=False)["input_ids"] + [eos]
    prompt = {"id": "p", "rubrics": [
        {"type": "both", "args": {"keywords": ["fish", "moon"]}, "description": "Include 'fish' and 'moon'."},
        {"type": "placeholders", "args": {"n": 3}, "description": "Use at least 3 placeholders like [name]."}]}
    checkers = {"both": lambda text, keywords: all(k in text.split() for k in keywords),
                "placeholders": lambda text, n: text.count("[") >= n}
    examples, stats = checker_edits.checker_examples([prompt], [[ids]], tok, checkers, max_calls=600)
    assert stats["both"].get("token_labels") == 1 and stats["placeholders"].get("token_labels") == 1   # not whole
    for rubric_type, text in (("both", " fish moon"), ("placeholders", " [name]" * 3)):
        lacking, holding = [e for e in examples if e["type"] == rubric_type]
        assert lacking["violated"] and lacking["response_ids"] == ids and not lacking["identifiable"]
        assert not holding["violated"] and holding["identifiable"] and holding["edited"]
        put = tok(text, add_special_tokens=False)["input_ids"]
        assert [i for i, y in zip(holding["response_ids"], holding["labels"]) if y] == put   # only what was put in
    one_word = checker_edits.put_candidates(tok, {"args": {"keywords": ["fish"]}})
    assert tuple(tok(" fish", add_special_tokens=False)["input_ids"]) in one_word and len(one_word) == 1 + len(
        checker_edits.PUT_TEXTS)                                        # one word: nothing to put in together


def test_labelling_in_forked_processes_gives_what_one_process_gives():
    _, tok = build_tiny_chat_model("qwen2")
    eos = tok.eos_token_id
    words = "the boat sails near a harbour at dawn with my old red kite".split()
    prompts = []
    responses = []
    for i in range(3 * checker_edits.CHUNK_PROMPTS + 1):                          # several chunks, one left over
        text = " ".join(words[i % 5:i % 5 + 3 + i % 4])
        prompts.append({"id": f"p{i}", "rubrics": [
            {"type": "include", "args": {"word": words[i % 7]}, "description": f"Include '{words[i % 7]}'."},
            {"type": "crashes", "args": {}, "description": "A checker that raises."}]})
        responses.append([tok(text, add_special_tokens=False)["input_ids"] + [eos]] * 2)
    checkers = {"include": lambda text, word: word in text.split(), "crashes": lambda text: 1 / 0}
    alone = checker_edits.checker_examples(prompts, responses, tok, checkers, max_calls=100)
    forked = checker_edits.checker_examples(prompts, responses, tok, checkers, max_calls=100, workers=2)
    assert forked == alone
    assert alone[1]["include"]["pairs"] == 2 * len(prompts) and alone[1]["crashes"]["crashed"] == 2 * len(prompts)
    assert [e["prompt_id"] for e in forked[0]] == [e["prompt_id"] for e in alone[0]]   # in the prompts' order
    with pytest.raises(ValueError, match="workers must be at least 1"):
        checker_edits.checker_examples(prompts, responses, tok, checkers, workers=0)


def test_the_search_finds_a_smallest_edit_first():
    calls = []

    def verdict(ids):
        calls.append(ids)
        return 7 not in ids or ids.count(7) > 1                                  # two 7s or none: "passes"

    edited, kind, n = checker_edits.minimal_edit([1, 7, 3, 2], verdict, puts=[[7]])
    assert (edited, kind) == ([1, 3, 2], "delete") and n == len(calls) == 3
    edited, kind, _ = checker_edits.minimal_edit([1, 3, 2], lambda ids: 7 in ids, puts=[[7, 8]])
    assert (edited, kind) == ([7, 8, 1, 3, 2], "put")                            # nothing to delete: a put


@pytest.fixture
def tiny_real_setup(tmp_path, monkeypatch):
    monkeypatch.setenv("RTT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(build, "REAL_RECIPE", {**build.REAL_RECIPE, "samples": 2,
                        "max_new_tokens": 6, "steps": 4, "batch_size": 4, "max_calls": 60})
    return write_policy_and_rubrics(tmp_path, n_prompts=12, avoid="the")


def test_a_real_policys_discriminator_is_built_once_and_refused_for_other_data(tiny_real_setup, tmp_path, capsys):
    policy_dir, data_path = tiny_real_setup
    disc, disc_tokenizer, meta = build.build_real_discriminator(policy_dir, data_path)
    assert "discriminator for" in capsys.readouterr().out
    assert meta["examples"] > 0 and set(meta["coverage"]) == {"include", "exclude"}
    assert meta["coverage"]["include"]["pairs"] == 2 * 10                        # 2 samples x 10 training prompts
    assert {"discriminator", "uniform", "random"} <= set(meta["report"]["all"])
    again = build.build_real_discriminator(policy_dir, data_path)
    assert capsys.readouterr().out == "" and again[2]["key"] == meta["key"]      # reused, not rebuilt
    out_dir = str(tmp_path / "cache" / "discriminators" / f"policy-{os.path.basename(data_path)}")
    with pytest.raises(ValueError, match="built for --data"):
        build.discriminator_for(policy_dir, "other.jsonl", disc_tokenizer, saved_dir=out_dir)
    with pytest.raises(ValueError, match="tokenizer differs"):
        build.discriminator_for(policy_dir, data_path, rubric_world.build_tokenizer(), saved_dir=out_dir)
    heatmap = tmp_path / "heat.png"                                              # the command line, on the cache
    build.main(["--policy", policy_dir, "--data", data_path, "--heatmap", str(heatmap), "--json",
                str(tmp_path / "report.json")])
    assert heatmap.exists() and (tmp_path / "heat.html").exists()
    assert json.loads((tmp_path / "report.json").read_text())["key"] == meta["key"]
    from relevance.report import real_heatmap_example
    rows = [{"prompt_id": "a", "response_ids": [5, 6, 7], "labels": [0.0, 1.0, 0.0], "edited": False, "violated": True,
             "scope": "tokens", "type": "include", "description": "Include 'sea'.", "identifiable": False},
            {"prompt_id": "b", "response_ids": [8, 9], "labels": [1.0, 1.0], "edited": False, "violated": False,
             "scope": "whole", "type": "exclude", "description": "Avoid 'the'.", "identifiable": False},
            {"prompt_id": "c", "response_ids": [5, 9], "labels": [1.0, 0.0], "edited": False, "violated": True,
             "scope": "tokens", "type": "include", "description": "Include 'sea'.", "identifiable": True}]
    prompts = {"a": {"prompt": "A?"}, "b": {"prompt": "B?"}, "c": {"prompt": "C?"}}
    assert real_heatmap_example(disc, disc_tokenizer, rows, prompts)["prompt"] == "C?"      # identifiable first
    assert real_heatmap_example(disc, disc_tokenizer, rows[:2], prompts)["prompt"] == "A?"  # then any token labels
    assert real_heatmap_example(disc, disc_tokenizer, rows, prompts, "exclude")["prompt"] == "B?"
    with pytest.raises(SystemExit, match="no held-out example of a keywords: rubric"):
        build.main(["--policy", policy_dir, "--data", data_path, "--heatmap_type", "keywords:"])
    with pytest.raises(SystemExit, match="--workers is for a real policy"):
        build.main(["--workers", "2"])
    with pytest.raises(SystemExit, match="--workers must be at least 1"):
        build.main(["--policy", policy_dir, "--data", data_path, "--workers", "0"])


def test_a_changed_recipe_redoes_only_the_stages_it_changes(tiny_real_setup, monkeypatch, capsys):
    policy_dir, data_path = tiny_real_setup
    first = build.build_real_discriminator(policy_dir, data_path)[2]
    calls = {"sample": 0, "label": 0}
    real_sample = build.policy_responses
    real_label = build.checker_examples
    monkeypatch.setattr(build, "policy_responses", lambda *a, **k: calls.update(sample=calls["sample"] + 1)
                        or real_sample(*a, **k))
    monkeypatch.setattr(build, "checker_examples", lambda *a, **k: calls.update(label=calls["label"] + 1)
                        or real_label(*a, **k))
    capsys.readouterr()
    retrained = build.build_real_discriminator(policy_dir, data_path, recipe={"steps": 30})[2]
    assert calls == {"sample": 0, "label": 0} and retrained["labels_reused"] and not first["labels_reused"]
    assert "reused" in capsys.readouterr().out and retrained["key"] != first["key"]
    assert retrained["coverage"] == first["coverage"] and retrained["sample_s"] == first["sample_s"]
    relabelled = build.build_real_discriminator(policy_dir, data_path, recipe={"steps": 30, "max_calls": 20})[2]
    assert calls == {"sample": 0, "label": 2} and not relabelled["labels_reused"]      # training + held-out pairs
    resampled = build.build_real_discriminator(policy_dir, data_path, recipe={"steps": 30, "seed": 1})[2]
    assert calls == {"sample": 2, "label": 4} and not resampled["labels_reused"]
    build.build_real_discriminator(policy_dir, data_path, recipe={"steps": 30, "seed": 1}, rebuild=True)
    assert calls == {"sample": 2, "label": 6}                 # --rebuild relabels; the same samples are read back


def test_zero_unidentifiable_trains_only_the_side_without_the_edit_to_zero(tiny_real_setup):
    rows = [{"scope": "tokens", "identifiable": True, "labels": [0.0, 1.0]},     # the side holding the edit
            {"scope": "tokens", "identifiable": False, "labels": [1.0, 0.0]},    # the other side: where it was
            {"scope": "whole", "identifiable": False, "labels": [1.0, 1.0]}]     # no edit: the whole response
    assert build.training_examples(rows, {"unidentifiable": "diff"}) == rows
    zeroed = build.training_examples(rows, {"unidentifiable": "zero"})
    assert [r["labels"] for r in zeroed] == [[0.0, 1.0], [0.0, 0.0], [1.0, 1.0]]
    assert rows[1]["labels"] == [1.0, 0.0]                                       # the saved pairs are not changed
    policy_dir, data_path = tiny_real_setup
    with pytest.raises(ValueError, match="choose 'diff' or 'zero'"):
        build.build_real_discriminator(policy_dir, data_path, recipe={"unidentifiable": "drop"})


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_policy_layers_are_the_policys_own_first_blocks_and_train_all_but_the_embeddings(family, tmp_path):
    from discriminator import load_discriminator, predict_examples, save_discriminator, train_discriminator
    policy, tokenizer = build_tiny_chat_model(family, seed=3, layers=3)
    recipe = {**build.REAL_RECIPE, "init": "policy_layers", "backbone": "causal", "layers": 2, "hidden": None,
              "heads": None, "intermediate": None, "word_match": False}
    classifier = build.encoder_for(policy, tokenizer, recipe)
    assert classifier.score.out_features == 1                                     # one logit, not the config's two
    ids = torch.tensor([tokenizer("Do not use commas. Sure, here it is.")["input_ids"]])
    with torch.no_grad():
        after_two = policy(ids, output_hidden_states=True).hidden_states[2]       # (1, L, H) before the final norm
        mine = classifier.base_model(ids).last_hidden_state                        # (1, L, H) after it
    torch.testing.assert_close(mine, policy.base_model.norm(after_two))
    embeddings = classifier.get_input_embeddings().weight.detach().clone()
    block = classifier.base_model.layers[0].mlp.up_proj.weight.detach().clone()
    example = {"description": "Do not use commas.", "response_ids": ids[0, 5:].tolist(),
               "labels": [1.0] + [0.0] * (ids.shape[1] - 6)}
    train_discriminator(classifier, tokenizer, [example], steps=3, batch_size=2, lr=1e-2)
    assert torch.equal(classifier.get_input_embeddings().weight, embeddings)      # frozen
    assert not torch.equal(classifier.base_model.layers[0].mlp.up_proj.weight, block)   # trained
    save_discriminator(classifier, tokenizer, str(tmp_path / "d"))
    loaded, loaded_tokenizer = load_discriminator(str(tmp_path / "d"), tokenizer)
    torch.testing.assert_close(predict_examples(loaded, loaded_tokenizer, [example])[0],
                               predict_examples(classifier, tokenizer, [example])[0])
    for wrong, message in [({"word_match": True}, "causal"), ({"hidden": 64}, "policy's width"),
                           ({"layers": 4}, "takes 1 to 3")]:
        with pytest.raises(ValueError, match=message):
            build.encoder_for(policy, tokenizer, {**recipe, **wrong})
    with pytest.raises(ValueError, match="give its hidden, heads, intermediate"):          # a small encoder's width
        build.encoder_for(policy, tokenizer, {**recipe, "init": "policy_pca", "backbone": "bidirectional"})


def test_train_builds_the_discriminator_of_a_real_policy_on_first_use(tiny_real_setup, tmp_path):
    policy_dir, data_path = tiny_real_setup
    summary = train.main(["paper", "--policy", policy_dir, "--data", data_path, "--judge", "rule", "--dtype", "float32",
                          "--device", "cpu", "--max_steps", "1", "--prompts_per_step", "2", "--group_size", "2",
                          "--max_new_tokens", "5", "--final_eval", "false", "--eval_every", "0",
                          "--out_dir", str(tmp_path / "run")])
    metrics = json.loads(open(os.path.join(tmp_path, "run", "metrics.jsonl")).readline())
    assert metrics["time/relevance"] > 0 and 0 < metrics["relevance/mean"] < 1 and summary["collapse"] is None


def test_a_dataset_without_checkers_asks_for_an_llm_labelled_discriminator(tiny_real_setup, tmp_path):
    policy_dir, _ = tiny_real_setup
    rows = [{"id": f"q{i}", "prompt": f"Say hi {i}.", "rubrics": ["Be friendly."]} for i in range(6)]
    (tmp_path / "llm_only.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(ValueError, match="no rubric of .* has a rule checker"):
        build.build_real_discriminator(policy_dir, str(tmp_path / "llm_only.jsonl"))


# ----------------------------------------------------------------------------- reference answers as pairs
def test_reference_answers_ship_for_every_base_task_of_the_training_prompts():
    from relevance import reference_answers
    from tasks import ifeval_train
    answers = reference_answers.reference_answers()
    tasks = ifeval_train.base_tasks()
    missing = [t for t in tasks if (t["source"], t["id"]) not in answers]
    assert not missing and len(tasks) == 825
    per_source = {s: sum(len(answers[t["source"], t["id"]]) for t in tasks if t["source"] == s)
                  for s in reference_answers.ANSWER_FILES}
    assert per_source["alpaca_eval"] == 743 and per_source["arena_hard_creative"] > 82      # two models each
    with pytest.raises(ValueError, match="not an IFEval-style training prompt"):
        reference_answers.base_task_of({"id": "1000"})                           # an IFEval benchmark id


def test_reference_responses_are_cut_to_the_policy_length_and_only_whole_ones_end_the_sequence():
    from relevance import reference_answers
    _, tok = build_tiny_chat_model("qwen2")
    answers = {("alpaca_eval", "7"): ["the boat sails near the harbour"], ("arena_hard_creative", "u1"): ["a", "b c"]}
    prompts = [{"id": "alpaca_eval/7/0"}, {"id": "arena_hard_creative/u1/3"}, {"id": "alpaca_eval/8/0"}]
    responses = reference_answers.reference_responses(prompts, tok, 3, answers)
    full = tok("the boat sails near the harbour", add_special_tokens=False)["input_ids"]
    assert len(full) > 3 and responses[0] == [full[:3]]                          # cut: no end of sequence
    assert responses[1] == [tok("a", add_special_tokens=False)["input_ids"] + [tok.eos_token_id],
                            tok("b c", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]]
    assert responses[2] == []                                                    # no answer for that task


def test_reference_pairs_never_read_a_task_a_held_out_prompt_asks(monkeypatch):
    from relevance import reference_answers
    _, tok = build_tiny_chat_model("qwen2")
    answers = {("alpaca_eval", "1"): ["no commas here"], ("alpaca_eval", "2"): ["one, two"]}
    monkeypatch.setattr(reference_answers, "reference_answers", lambda: answers)
    rubric = {"type": "punctuation:no_comma", "args": {}, "description": "Do not use any commas."}
    train_prompts = [{"id": "alpaca_eval/1/0", "rubrics": [rubric]}, {"id": "alpaca_eval/2/0", "rubrics": [rubric]}]
    held_out = [{"id": "alpaca_eval/2/1", "rubrics": [rubric]}]                  # task 2 again, other constraints
    checkers = {"punctuation:no_comma": lambda text: "," not in text}
    examples, coverage = build.reference_pairs(train_prompts, held_out, tok, checkers, build.REAL_RECIPE)
    assert {e["prompt_id"] for e in examples} == {"alpaca_eval/1/0"} and coverage["punctuation:no_comma"]["pairs"] == 1
    assert {e["side"] for e in examples} == {"positive", "negative"}             # both sides of the minimal pair


def test_the_build_adds_reference_pairs_only_where_answers_ship(tiny_real_setup, tmp_path, monkeypatch, capsys):
    from relevance import reference_answers
    policy_dir, data_path = tiny_real_setup
    rows = [json.loads(line) for line in open(data_path)]
    for i, row in enumerate(rows):
        row["id"] = f"alpaca_eval/{i}/0"                                           # one base task per prompt
    (tmp_path / "ifeval_style.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    answers = {("alpaca_eval", str(i)): ["the sea is calm", "boats and nets"] for i in range(len(rows))}
    monkeypatch.setattr(reference_answers, "reference_answers", lambda: answers)
    recipe = {"reference_answers": True}
    _, _, meta = build.build_real_discriminator(policy_dir, str(tmp_path / "ifeval_style.jsonl"), recipe=recipe,
                                                workers=2)
    assert meta["reference_coverage"]["include"]["pairs"] == 2 * 10            # 2 answers x 10 training prompts
    assert meta["reference_examples"] > 0 and meta["examples"] == meta["policy_examples"] + meta["reference_examples"]
    pairs = tmp_path / "cache" / "discriminators" / "policy-ifeval_style.jsonl-pairs"
    saved = [json.loads(line) for line in open(pairs / "examples.jsonl")]
    held_out = {e["prompt_id"] for e in map(json.loads, open(pairs / "held_out_examples.jsonl"))}
    from_answers = [e for e in saved if e.get("source") == "reference"]
    assert len(from_answers) == meta["reference_examples"] and not held_out & {e["prompt_id"] for e in from_answers}
    capsys.readouterr()
    _, _, plain = build.build_real_discriminator(policy_dir, data_path, recipe=recipe)   # ids q0..: no answers
    assert "policy's pairs only" in capsys.readouterr().out
    assert plain["reference_examples"] == 0 and plain["reference_coverage"] == {}


def test_candidates_are_measured_on_the_builds_held_out_pairs_and_a_later_run_adds_its_curve(
        tiny_real_setup, tmp_path, monkeypatch, capsys):
    import sys
    from relevance import reference_answers
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments"))
    import discriminator_candidates as candidates
    monkeypatch.setattr(candidates, "PINNED", {**candidates.PINNED, "hidden": 16, "heads": 2, "intermediate": 32})
    changes, sources = candidates.VARIANTS["policy_layers"]                      # the tiny recipe's steps
    monkeypatch.setitem(candidates.VARIANTS, "policy_layers", ({**changes, "steps": 4}, sources))
    policy_dir, data_path = tiny_real_setup
    rows = [json.loads(line) for line in open(data_path)]
    for i, row in enumerate(rows):
        row["id"] = f"alpaca_eval/{i}/0"
    data = str(tmp_path / "ifeval_style.jsonl")
    (tmp_path / "ifeval_style.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    monkeypatch.setattr(reference_answers, "reference_answers",
                        lambda: {("alpaca_eval", str(i)): ["the sea is calm"] for i in range(len(rows))})
    out = str(tmp_path / "candidates.json")
    argv = ["--policy", policy_dir, "--data", data, "--json", out]
    with pytest.raises(SystemExit, match="no build to compare against"):
        candidates.main(argv + ["--variants", "policy_pca"])
    _, _, meta = build.build_real_discriminator(policy_dir, data)
    first = candidates.main(argv + ["--variants", "policy_pca,policy_layers"])
    assert first["examples"]["policy"] == meta["policy_examples"] and first["examples"]["reference"] > 0
    assert first["variants"]["policy_layers"]["examples"] == sum(first["examples"].values())
    assert first["variants"]["policy_pca"]["report"]["all"]["discriminator"]["examples"] == meta["held_out_examples"]
    assert first["build"]["recipe"] == first["variants"]["policy_layers"]["recipe"]   # the recipe's variant
    same = [json.dumps(run["report"], sort_keys=True) for run in (first["build"], first["variants"]["policy_layers"])]
    assert same[0] == same[1]                                      # is the build, exactly (NaN top-1s compared too)
    plot = tmp_path / "curve.png"
    second = candidates.main(argv + ["--variants", "", "--curve", "word_match+reference", "--fractions", "0.5",
                                     "--plot", str(plot)])
    assert set(second["variants"]) == {"policy_pca", "policy_layers"}
    assert set(second["curve"]) == {"word_match+reference"} and set(second["curve"]["word_match+reference"]) == {"0.5"}
    saved_curve = json.load(open(out))["curve"]["word_match+reference"]
    assert saved_curve["0.5"]["examples"] == round(0.5 * sum(first["examples"].values()))
    assert plot.exists()
    with pytest.raises(SystemExit, match="--plot draws the learning curve"):
        candidates.main(argv + ["--plot", str(plot)])
    fit = candidates.main(argv + ["--variants", "", "--fit", "5"])              # the build's model on its pairs
    assert fit["build_training_fit"]["examples"] == 5 == fit["build_training_fit"]["report"]["all"]["uniform"]["examples"]
    saved_fit = json.load(open(out))["build_training_fit"]
    third = candidates.main(argv + ["--variants", "policy_pca", "--steps", "3"])      # the compute axis
    assert json.load(open(out))["build_training_fit"] == saved_fit                  # kept by a later run
    assert set(json.load(open(out))["variants"]["policy_pca"]["by_training_labels"]) == {"mostly_token_types",
                                                                                      "mostly_whole_types"}
    assert third["variants"]["policy_pca, 3 steps"]["recipe"]["steps"] == 3 and "policy_pca" in third["variants"]
    with pytest.raises(SystemExit, match="applies to --variants only"):
        candidates.main(argv + ["--curve", "policy_pca", "--steps", "3"])
    fourth = candidates.main(argv + ["--variants", "policy_pca", "--steps", "3", "--seed", "1"])   # the noise axis
    assert fourth["variants"]["policy_pca, 3 steps, seed 1"]["recipe"]["seed"] == 1
    assert third["variants"]["policy_pca, 3 steps"]["recipe"]["seed"] == build.REAL_RECIPE["seed"] != 1
    with pytest.raises(SystemExit, match="applies to --variants only"):
        candidates.main(argv + ["--curve", "policy_pca", "--seed", "1"])
    with pytest.raises(SystemExit, match="unknown variants"):
        candidates.main(argv + ["--variants", "no_such_variant"])


def test_token_scope_figures_pool_by_what_a_types_training_labels_mostly_are():
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments"))
    from discriminator_candidates import by_training_labels
    training = [{"type": "kw", "scope": "tokens"}] * 3 + [{"type": "kw", "scope": "whole"},
                                                         {"type": "count", "scope": "whole"}]
    def group(examples, tokens, labels, predicted, hits):
        return {"discriminator": {"examples": examples, "tokens": tokens, "relevant_share": labels / tokens,
                                  "precision": hits / max(predicted, 1), "recall": hits / labels}}
    metrics = {"type_scope/kw/tokens": group(4, 40, 8, 6, 6), "type_scope/count/tokens": group(2, 20, 2, 20, 2),
               "type_scope/kw/whole": group(1, 10, 10, 10, 10), "scope/tokens": group(6, 60, 10, 26, 8)}
    pooled = by_training_labels(metrics, training)
    assert pooled["mostly_token_types"]["examples"] == 4
    assert pooled["mostly_token_types"]["precision"] == 1.0 and pooled["mostly_token_types"]["recall"] == 0.75
    assert pooled["mostly_whole_types"]["precision"] == 0.1 and pooled["mostly_whole_types"]["recall"] == 1.0
    metrics["type_scope/count/tokens"] = group(2, 20, 2, 20, 0)                  # no hit: how many predicted?
    assert by_training_labels(metrics, training)["mostly_whole_types"] is None


def test_the_report_groups_every_example_by_scope_type_and_side():
    from discriminator import token_metrics
    from relevance.report import evaluate
    rows = [{"labels": [0.0, 1.0, 0.0], "violated": True, "identifiable": True, "scope": "tokens", "type": "a",
             "side": "negative"},
            {"labels": [1.0, 1.0], "violated": True, "identifiable": False, "scope": "whole", "type": "a",
             "side": "negative"},
            {"labels": [1.0, 0.0], "violated": False, "identifiable": False, "scope": "tokens", "type": "b",
             "side": "positive"}]
    probs = [torch.tensor([0.1, 0.9, 0.6]), torch.tensor([0.7, 0.2]), torch.tensor([0.3, 0.4])]
    report = evaluate(rows, {"model": probs})
    members = {"all": [0, 1, 2], "identifiable": [0], "not_identifiable": [1, 2], "scope/tokens": [0, 2],
               "scope/whole": [1], "type/a": [0, 1], "type/b": [2], "type_scope/a/tokens": [0],
               "type_scope/a/whole": [1], "type_scope/b/tokens": [2], "type_side/a/negative": [0, 1],
               "type_side/b/positive": [2]}
    assert set(report) == set(members)
    for group, idx in members.items():
        expected = token_metrics([probs[i] for i in idx], [rows[i]["labels"] for i in idx],
                                 [rows[i]["violated"] for i in idx])
        assert json.dumps(report[group]["model"], sort_keys=True) == json.dumps(expected, sort_keys=True)
