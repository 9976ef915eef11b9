"""Rubric World: checkers on hand-written responses, minimal-modification editors, splits, labels, oracle."""
import random

import pytest
import torch

from tasks import rubric_world
from tasks import rubric_world_edits
from relevance import rubric_world_labels
from discriminator import token_diff_labels
from tasks.rubric_world import CHECKERS, make_rubric, passes

# (type, args, satisfying responses, violating responses), all written by hand
CHECKER_CASES = [
    ("starts_with", {"word": "boat"}, ["boat on the sea", "boat"], ["the boat", "Boat on sand", "boats sail"]),
    ("ends_with", {"word": "moon"}, ["the old moon", "moon"], ["moon and star", "the moon ;", "a Moon"]),
    ("include", {"word": "fox"}, ["a fox", "fox ; moss fox"], ["a foxes", "the owl", "Fox ran"]),
    ("exclude", {"word": "owl"}, ["the fox", "owls and moss"], ["an owl", "owl", "moss ; owl ; tree"]),
    ("length", {"lo": 3, "hi": 4}, ["a b c", "a ; b c d", "one two three four"], ["a b", "a ; b", "a b c d e"]),
    ("count", {"word": "salt", "n": 2}, ["salt and salt", "salt ; soup salt"], ["salt", "salt salt salt", "soup"]),
    ("lowercase", {}, ["the old barn", "3 goats ; 4 cows"], ["the old Barn", "Anna and the cow"]),
    ("order", {"first": "star", "second": "moon"}, ["star then moon", "a star ; moon star moon"],
     ["moon then star", "star only", "moon only", "moon star moon"]),
    ("parts", {"n": 3}, ["a ; b ; c", "the fox ; an owl ; moss and leaf"],
     ["a ; b", "a ; b ; c ; d", "a ; ; b", "; a ; b", "a ; b ;"]),
]


@pytest.mark.parametrize("rubric_type, args, good, bad", CHECKER_CASES, ids=[c[0] for c in CHECKER_CASES])
def test_checker_on_hand_written_examples(rubric_type, args, good, bad):
    for response in good:
        assert CHECKERS[rubric_type](response, **args), (rubric_type, response)
    for response in bad:
        assert not CHECKERS[rubric_type](response, **args), (rubric_type, response)


def test_every_rubric_type_has_hand_written_cases():
    assert {c[0] for c in CHECKER_CASES} == set(CHECKERS)


@pytest.mark.parametrize("rubric_type, args", [(c[0], c[1]) for c in CHECKER_CASES], ids=[c[0] for c in CHECKER_CASES])
def test_empty_and_too_long_responses_fail_every_rubric(rubric_type, args):
    assert not CHECKERS[rubric_type]("", **args)
    assert not CHECKERS[rubric_type]("   ", **args)
    good = next(c[2][0] for c in CHECKER_CASES if c[0] == rubric_type)
    too_long = " ".join([good] + ["boat"] * rubric_world.MAX_WORDS)            # passes on content, but never ended
    assert len(too_long.split()) > rubric_world.MAX_WORDS
    assert not CHECKERS[rubric_type](too_long, **args)


def test_unknown_rubric_type_and_bad_args_raise_value_error():
    with pytest.raises(ValueError, match="unknown rubric type 'rhymes'"):
        make_rubric("rhymes", word="boat")
    with pytest.raises(ValueError, match="unknown rubric type 'rhymes'"):
        passes({"type": "rhymes", "args": {}}, ["boat"])
    with pytest.raises(ValueError, match="starts_with"):
        make_rubric("starts_with", n=3)


def test_make_rubric_description_names_its_arguments():
    rubric = make_rubric("count", word="salt", n=2)
    assert rubric == {"type": "count", "args": {"word": "salt", "n": 2},
                      "description": "Use 'salt' exactly 2 times."}


# ----------------------------------------------------------------------------- splits
def small_splits(seed):
    return rubric_world.make_splits(seed=seed, n_train=300, n_val=20, n_test=40, n_unseen=30)


def test_splits_are_deterministic_by_seed():
    assert small_splits(3) == small_splits(3)
    assert small_splits(3)["test"] != small_splits(4)["test"]


def test_splits_are_disjoint_and_held_out_combos_never_reach_training():
    splits = small_splits(0)
    texts = {name: {p["prompt"] for p in ps} for name, ps in splits.items()}
    names = list(texts)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not texts[a] & texts[b], (a, b)
    for name in ("train", "val", "test"):
        assert not any(rubric_world.has_held_out_pair(p) for p in splits[name])
    assert all(rubric_world.has_held_out_pair(p) for p in splits["test_unseen_combos"])
    assert not {p["combo"] for p in splits["train"]} & {p["combo"] for p in splits["test_unseen_combos"]}


def test_test_split_does_not_depend_on_train_size():
    assert rubric_world.make_splits(0, n_train=10, n_val=5, n_test=30, n_unseen=5)["test"] == \
        rubric_world.make_splits(0, n_train=200, n_val=5, n_test=30, n_unseen=5)["test"]


def test_prompts_have_three_to_six_distinct_rubrics_stated_in_the_text():
    for prompt in small_splits(1)["train"]:
        types = [r["type"] for r in prompt["rubrics"]]
        assert 3 <= len(types) <= 6 and len(set(types)) == len(types)
        assert all(r["description"] in prompt["prompt"] for r in prompt["rubrics"])
        assert all(passes(r, rubric_world.satisfying_response(prompt, random.Random(0))) for r in prompt["rubrics"])


# ----------------------------------------------------------------------------- minimal modifications
def verdicts(prompt, words):
    return [passes(r, words) for r in prompt["rubrics"]]


def test_violate_breaks_exactly_the_target_and_keeps_the_others():
    rng = random.Random(0)
    n_edits = 0
    for prompt in small_splits(2)["train"][:150]:
        words = rubric_world.satisfying_response(prompt, rng)
        for k, rubric in enumerate(prompt["rubrics"]):
            edited = rubric_world_edits.violate(rubric, words, rng, prompt["rubrics"])
            assert edited is not None, (prompt["prompt"], rubric)
            after = verdicts(prompt, edited)
            assert after == [j != k for j in range(len(after))], (words, edited, rubric["description"])
            labels, edited_labels = token_diff_labels(words, edited)
            assert sum(labels) + sum(edited_labels) > 0 and sum(edited_labels) > 0
            n_edits += 1
    assert n_edits > 500


def test_violate_on_a_teacher_response_keeps_the_verdicts_it_had():
    rng = random.Random(1)
    for prompt in small_splits(2)["val"]:
        for _ in range(5):
            words = rubric_world_edits.teacher_response(prompt, rng, p_satisfy=0.6)
            before = verdicts(prompt, words)
            for k, rubric in enumerate(prompt["rubrics"]):
                if not before[k]:
                    continue
                edited = rubric_world_edits.violate(rubric, words, rng, prompt["rubrics"])
                if edited is None:
                    continue
                after = verdicts(prompt, edited)
                assert not after[k]
                assert all(after[j] for j in range(len(before)) if before[j] and j != k)


def test_repair_fixes_exactly_the_target_and_keeps_the_others():
    rng = random.Random(2)
    n_repairs = 0
    for prompt in small_splits(2)["train"][:150]:
        words = rubric_world.satisfying_response(prompt, rng)
        for rubric in prompt["rubrics"]:
            broken = rubric_world_edits.violate(rubric, words, rng, prompt["rubrics"])
            fixed = rubric_world_edits.repair(rubric, broken, rng, prompt["rubrics"])
            assert fixed is not None, (broken, rubric["description"])
            assert all(verdicts(prompt, fixed)), (broken, fixed, rubric["description"])
            assert sum(token_diff_labels(broken, fixed)[0]) > 0
            n_repairs += 1
    assert n_repairs > 500


def test_violate_and_repair_reject_the_wrong_direction():
    rubric = make_rubric("starts_with", word="boat")
    with pytest.raises(ValueError, match="satisfies"):
        rubric_world_edits.violate(rubric, ["the", "boat"], random.Random(0))
    with pytest.raises(ValueError, match="violates"):
        rubric_world_edits.repair(rubric, ["boat", "ahoy"], random.Random(0))


def test_teacher_is_perfect_at_p1_and_imperfect_below():
    rng = random.Random(0)
    prompts = small_splits(5)["val"]
    assert all(all(verdicts(p, rubric_world_edits.teacher_response(p, rng, 1.0))) for p in prompts)
    rate = sum(sum(verdicts(p, rubric_world_edits.teacher_response(p, rng, 0.5))) for p in prompts for _ in range(10)) / \
        sum(10 * len(p["rubrics"]) for p in prompts)
    assert 0.4 < rate < 0.75
    with pytest.raises(ValueError, match="p_satisfy"):
        rubric_world_edits.teacher_response(prompts[0], rng, 1.5)


# ----------------------------------------------------------------------------- token labels
def test_token_diff_labels_hand_examples():
    assert token_diff_labels([1, 2, 3], [1, 2, 3]) == ([0, 0, 0], [0, 0, 0])
    assert token_diff_labels([1, 2, 3], [1, 9, 3]) == ([0, 1, 0], [0, 1, 0])                # replace
    assert token_diff_labels([1, 2, 3, 4], [1, 3, 2, 4]) == ([0, 1, 1, 0], [0, 1, 1, 0])   # swap
    assert token_diff_labels([1, 2, 3, 4, 5], [1, 4, 3, 2, 5]) == ([0, 1, 0, 1, 0], [0, 1, 0, 1, 0])
    assert token_diff_labels([1, 2, 3, 4, 5], [1, 3, 4, 2, 5]) == ([0, 1, 0, 0, 1], [0, 1, 0, 1, 0])  # move
    assert token_diff_labels([1, 2, 3], [1, 3]) == ([0, 1, 0], [0, 1])                     # deletion
    assert token_diff_labels([1, 2, 3], [1, 2]) == ([0, 0, 1], [0, 1])                     # cut at the end
    assert token_diff_labels([], [7]) == ([], [1])


def test_relevance_pair_labels_cover_the_words_plus_eos():
    rng = random.Random(0)
    rubric = make_rubric("length", lo=3, hi=4)
    edited, labels = rubric_world_labels.relevance_pair(rubric, ["a", "b"], rng)              # too short: a word goes in
    assert passes(rubric, edited) and edited[0] == "a" and edited[-1] == "b"   # before the last word, so the
    assert labels == [0, 1, 0]                                                 # blame is the word after the gap
    edited, labels = rubric_world_labels.relevance_pair(make_rubric("starts_with", word="boat"), ["boat", "a"], rng)
    assert edited[1:] == ["a"] and edited[0] != "boat" and labels == [1, 0, 0]


def test_minimal_pairs_flip_only_their_rubric():
    pairs = list(rubric_world_labels.minimal_pairs(small_splits(6)["val"], random.Random(0)))
    assert len(pairs) > 40
    prompts = {p["id"]: p for p in small_splits(6)["val"]}
    for pair in pairs:
        prompt, rubric = prompts[pair["prompt_id"]], pair["rubric"]
        assert passes(rubric, pair["positive"]) and not passes(rubric, pair["negative"])
        others = [r for r in prompt["rubrics"] if r != rubric]
        assert [passes(r, pair["positive"]) for r in others] == [passes(r, pair["negative"]) for r in others]
        assert len(pair["positive_labels"]) == len(pair["positive"]) + 1
        assert len(pair["negative_labels"]) == len(pair["negative"]) + 1
        assert sum(pair["positive_labels"]) + sum(pair["negative_labels"]) > 0


# ----------------------------------------------------------------------------- tokenizer and oracle
def test_tokenizer_covers_every_word_the_task_uses():
    tokenizer = rubric_world.build_tokenizer()
    prompt = small_splits(0)["test"][0]
    ids = tokenizer(prompt["prompt"], add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    words = rubric_world.satisfying_response(prompt, random.Random(0))
    assert tokenizer.decode(tokenizer.convert_tokens_to_ids(words)) == " ".join(words)
    assert len(set(rubric_world.vocabulary())) == len(rubric_world.vocabulary())


def test_oracle_relevance_shape_padding_and_labels():
    tokenizer = rubric_world.build_tokenizer()
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    prompts = [{"id": "a", "rubrics": [make_rubric("starts_with", word="boat"), make_rubric("exclude", word="owl")]},
               {"id": "b", "rubrics": [make_rubric("ends_with", word="moon")]}]
    rows = [[["boat", "and", "owl"], ["the", "sea"]], [["a", "moon"], ["moon", "star", "dust"]]]
    t_size = 5
    response_ids = torch.full((2, 2, t_size), pad)
    token_mask = torch.zeros(2, 2, t_size, dtype=torch.bool)
    for b, group in enumerate(rows):
        for g, words in enumerate(group):
            ids = tokenizer.convert_tokens_to_ids(words) + [eos]
            response_ids[b, g, :len(ids)] = torch.tensor(ids)
            token_mask[b, g, :len(ids)] = True
    token_mask[1, 1, 3] = False                                                  # cut before EOS: no EOS
    response_ids[1, 1, 3] = pad
    relevance = rubric_world_labels.oracle_relevance(prompts, response_ids, token_mask, tokenizer)
    assert relevance.shape == (2, 2, 2, t_size) and relevance.dtype == torch.float32
    assert bool((relevance[~token_mask[:, :, None, :].expand_as(relevance)] == 0).all())   # padded tokens
    assert bool((relevance[1, :, 1] == 0).all())                                            # padded rubric
    assert relevance[0, 0, 0].tolist() == [1, 0, 0, 0, 0]       # 'boat' starts it: the first word
    assert relevance[0, 0, 1].tolist() == [0, 0, 1, 0, 0]       # 'owl' breaks exclude: the word itself
    assert relevance[0, 1, 0].tolist() == [1, 0, 0, 0, 0]       # the wrong first word
    assert relevance[1, 0, 0].tolist() == [0, 1, 0, 0, 0]       # 'moon' ends it
    assert relevance[1, 1, 0].tolist() == [0, 0, 1, 0, 0]       # the wrong last word


def test_oracle_relevance_rejects_bad_shapes():
    tokenizer = rubric_world.build_tokenizer()
    prompts = [{"id": "a", "rubrics": [make_rubric("lowercase")]}]
    with pytest.raises(ValueError, match="bool token_mask"):
        rubric_world_labels.oracle_relevance(prompts, torch.zeros(1, 1, 3, dtype=torch.long), torch.ones(1, 1, 3), tokenizer)
    with pytest.raises(ValueError, match="2 prompts"):
        rubric_world_labels.oracle_relevance(prompts * 2, torch.zeros(1, 1, 3, dtype=torch.long),
                              torch.ones(1, 1, 3, dtype=torch.bool), tokenizer)


def test_regimes_restrict_the_rubrics_and_keep_the_default_draws():
    from tasks import registry

    local = registry.load_splits("rubric_world:local")["test"]
    assert all(r["type"] in rubric_world.LOCAL_TYPES for p in local for r in p["rubrics"])
    assert {r["type"] for p in registry.load_splits("rubric_world:global")["val"] for r in p["rubrics"]} == {
        "length", "count", "parts"}
    assert {len(p["rubrics"]) for p in registry.load_splits("rubric_world:k6")["val"]} == {6}
    assert registry.load_splits("rubric_world") == rubric_world.make_splits(seed=0)
    with pytest.raises(ValueError, match="unknown Rubric World regime"):
        registry.load_splits("rubric_world:nope")


def test_repeating_a_rubric_word_is_counted_unless_a_count_rubric_asks_for_it():
    prompt = {"rubrics": [make_rubric("include", word="boat"), make_rubric("count", word="fish", n=3)]}
    assert rubric_world.repeats_a_rubric_word(prompt, "boat boat the boat")
    assert not rubric_world.repeats_a_rubric_word(prompt, "boat fish fish fish")        # asked for: 3 fish
    assert not rubric_world.repeats_a_rubric_word(prompt, "the the the boat")           # 'the' is no rubric's word
    from tasks import registry
    texts = [["boat boat boat", "boat"], ["fish", "a"]]
    assert registry.batch_metrics("rubric_world:k3", [prompt, prompt], texts) == {"hacking/repeated_rubric_word": 0.25}
    assert registry.batch_metrics("ifeval", [prompt, prompt], texts) == {}
