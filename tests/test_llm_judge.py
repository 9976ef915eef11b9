"""LLM judge: strict YES/NO parsing, verdicts and logs from canned and real (tiny) models, the hybrid judge."""
import pytest
import torch

from tiny_models import build_tiny_chat_model
from rewards import HybridJudge, LLMJudge, parse_verdict

PROMPTS = [{"id": "p0", "prompt": "Write about the sea.",
            "rubrics": [{"type": "llm", "args": {}, "description": "The tone is formal."},
                        {"type": "starts_with", "args": {"word": "boat"}, "description": "Start with 'boat'."}]},
           {"id": "p1", "prompt": "Say hi.", "rubrics": [{"type": "llm", "args": {}, "description": "Be brief."}]}]
CHECKERS = {"starts_with": lambda response, word: response.split()[0] == word}


@pytest.mark.parametrize("answer,verdict", [
    ("YES", True), ("yes", True), (" Yes.\n", True), ("**YES**", True), ("YES!", True),
    ("NO", False), ("no", False), ("No.", False), ("  nO  ", False), ("**No**", False),
    ("I don't know", None), ("know", None), ("Not sure", None), ("No, because it is informal", None),
    ("Yes, it does", None), ("yes and no", None), ("YES NO", None), ("", None), ("N/A", None), ("NOPE", None),
    ("Y", None), ("YES..", None),
])
def test_parse_verdict_accepts_only_a_bare_yes_or_no(answer, verdict):
    assert parse_verdict(answer) is verdict


class CannedJudge(LLMJudge):
    """An LLMJudge whose model answers from a list: tests the mapping answers -> scores, stats and log."""

    def __init__(self, answers):
        super().__init__(model=None, tokenizer=None)
        self.canned, self.questions = list(answers), []

    def question_text(self, criterion, response):
        return f"{criterion} | {response}"

    def answer(self, questions):
        self.questions += questions
        return [self.canned.pop(0) for _ in questions]


def test_llm_judge_scores_parsed_answers_and_counts_the_rest_as_no():
    judge = CannedJudge(["YES", "I don't know", "no.", "Yes"])
    scores, rubric_mask = judge(PROMPTS[1:], [["hi", "hello there", "hey", "yo"]])
    assert scores.dtype == torch.float32 and rubric_mask.tolist() == [[True]]
    assert scores[0, :, 0].tolist() == [1.0, -1.0, -1.0, 1.0]                 # "I don't know" is NO, not by substring
    assert judge.stats == {"yes": 2, "no": 1, "unparsed": 1, "empty": 0}
    assert [entry["answer"] for entry in judge.log] == ["YES", "I don't know", "no.", "Yes"]
    assert judge.log[1] == {"prompt": "p1", "rubric": "Be brief.", "answer": "I don't know", "verdict": False}


def test_llm_judge_pads_rubrics_and_never_asks_about_empty_responses():
    judge = CannedJudge(["YES"] * 10)
    prompts = [{**PROMPTS[0], "rubrics": PROMPTS[0]["rubrics"][:1]}, PROMPTS[1]]
    scores, rubric_mask = judge(prompts, [["a", " "], ["b", "c"]])
    assert rubric_mask.tolist() == [[True], [True]] and scores.shape == (2, 2, 1)
    assert scores[:, :, 0].tolist() == [[1.0, -1.0], [1.0, 1.0]]
    assert judge.stats["empty"] == 1 and len(judge.questions) == 3


def test_hybrid_judge_uses_checkers_where_they_exist_and_the_llm_elsewhere():
    llm = CannedJudge(["NO", "YES", "YES", "maybe"])
    judge = HybridJudge(CHECKERS, llm)
    scores, rubric_mask = judge(PROMPTS, [["boat at sea", "sea boat"], ["hi", "hello"]])
    assert rubric_mask.tolist() == [[True, True], [True, False]]
    assert scores[0, :, 1].tolist() == [1.0, -1.0]                             # rule: starts with 'boat'
    assert scores[0, :, 0].tolist() == [-1.0, 1.0] and scores[1, :, 0].tolist() == [1.0, -1.0]  # llm, in order
    assert scores[1, :, 1].tolist() == [0.0, 0.0]                              # padded rubric
    assert [q.split(" | ")[0] for q in llm.questions] == ["The tone is formal."] * 2 + ["Be brief."] * 2


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_llm_judge_with_a_tiny_random_model_gives_plus_minus_one_and_logs_every_answer(family):
    model, tokenizer = build_tiny_chat_model(family, seed=5)
    judge = LLMJudge(model, tokenizer, batch_size=3, max_new_tokens=3)
    scores, rubric_mask = judge(PROMPTS, [["boat at sea", "sea"], ["hi", "hello"]])
    valid = rubric_mask[:, None, :].expand_as(scores)
    assert bool(((scores[valid] == 1) | (scores[valid] == -1)).all()) and not scores[~valid].any()
    assert sum(judge.stats.values()) == 6 == len(judge.log)
    assert all(isinstance(entry["answer"], str) for entry in judge.log)
    assert judge.stats["yes"] == int((scores == 1).sum())                      # only a parsed YES passes
    question = judge.question_text("Be brief.", "hi")
    assert "Be brief." in question and "YES or NO" in question and question.endswith(
        "<|end_header_id|>\n\n" if family == "llama" else "<|im_start|>assistant\n")
