"""rewards.py: response rewards, token rewards and the rule judge."""

import pytest
import torch

from rewards import RuleJudge, pad_rubrics, response_reward, token_rewards


def test_response_reward_ignores_padded_rubrics():
    scores = torch.tensor([[[1., 1., 0.], [1., -1., 0.]],                        # prompt 0: 2 rubrics
                           [[1., 1., 1.], [-1., 1., 1.]]])                       # prompt 1: 3 rubrics
    mask = torch.tensor([[True, True, False], [True, True, True]])
    assert torch.equal(response_reward(scores, mask, "aon"), torch.tensor([[1., 0.], [1., 0.]]))
    torch.testing.assert_close(response_reward(scores, mask, "mean"), torch.tensor([[1., 0.5], [1., 2 / 3]]))


def test_token_rewards_keep_soft_weights_as_floats():
    """METHOD.md §7 defect 2: the authors' integer buffer truncates 0.3 to 0; here 0.3 stays 0.3."""
    scores = torch.tensor([[[1., -1.]]])
    relevance = torch.tensor([[[[0.3, 0.998], [0.3, 0.0]]]])
    out = token_rewards(scores, relevance)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([[[[0.3, 0.998], [-0.3, 0.0]]]]))
    with pytest.raises(ValueError, match="integer tensor would truncate"):
        token_rewards(scores, (relevance > 0.5).long())


def test_clear_errors_for_bad_scores_and_shapes():
    mask = torch.ones(1, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"\+1 \(satisfied\) or -1"):
        response_reward(torch.tensor([[[1., 0.5]]]), mask)
    with pytest.raises(ValueError, match="at least one rubric"):
        response_reward(torch.ones(1, 1, 2), torch.zeros(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="unknown reward"):
        response_reward(torch.ones(1, 1, 2), mask, "max")
    with pytest.raises(ValueError, match=r"\(B, G, K\)"):
        response_reward(torch.ones(1, 2), mask)
    with pytest.raises(ValueError, match=r"rubric_mask must be a bool"):
        response_reward(torch.ones(1, 1, 2), mask.float())
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        token_rewards(torch.ones(1, 1, 1), torch.full((1, 1, 1, 2), 1.5))
    with pytest.raises(ValueError, match="padded rubric"):
        token_rewards(torch.full((1, 1, 1), 2.0), torch.zeros(1, 1, 1, 2))


CHECKERS = {
    "starts_with": lambda response, word: response.split()[0] == word,
    "max_words": lambda response, n: len(response.split()) <= n,
    "broken": lambda response: 1 / 0,
}


def rubric(kind, **args):
    return {"type": kind, "args": args, "description": f"{kind} {args}"}


def test_rule_judge_scores_pads_and_logs():
    prompts = [{"id": "a", "rubrics": [rubric("starts_with", word="boat"), rubric("max_words", n=3)]},
               {"id": "b", "rubrics": [rubric("broken")]}]
    responses = [["boat on sea", "the boat is big"], ["anything", ""]]
    judge = RuleJudge(CHECKERS)
    scores, mask = judge(prompts, responses)
    assert torch.equal(scores, torch.tensor([[[1., 1.], [-1., -1.]], [[-1., 0.], [-1., 0.]]]))
    assert torch.equal(mask, torch.tensor([[True, True], [True, False]]))
    assert len(judge.errors) == 1 and "ZeroDivisionError" in judge.errors[0]["reason"]   # the empty one never ran


def test_rule_judge_empty_response_fails_every_rubric():
    judge = RuleJudge({"max_words": CHECKERS["max_words"]})
    scores, _ = judge([{"id": "p", "rubrics": [rubric("max_words", n=5)]}], [["   ", "fine"]])
    assert torch.equal(scores, torch.tensor([[[-1.], [1.]]]))


def test_rule_judge_errors_name_the_problem():
    judge = RuleJudge(CHECKERS)
    with pytest.raises(ValueError, match="unknown rubric type 'rhyme'"):
        judge([{"id": "p", "rubrics": [rubric("rhyme")]}], [["x"]])
    with pytest.raises(ValueError, match="has no rubrics"):
        judge([{"id": "p", "rubrics": []}], [["x"]])
    with pytest.raises(ValueError, match="same number of responses"):
        judge([{"id": "p", "rubrics": [rubric("max_words", n=1)]}] * 2, [["x"], ["x", "y"]])
    with pytest.raises(ValueError, match="2 prompts but 1"):
        judge([{"id": "p", "rubrics": [rubric("max_words", n=1)]}] * 2, [["x"]])


def test_pad_rubrics():
    k_max, mask = pad_rubrics([{"rubrics": [1, 2, 3]}, {"rubrics": [1]}])
    assert k_max == 3 and torch.equal(mask, torch.tensor([[True, True, True], [True, False, False]]))
