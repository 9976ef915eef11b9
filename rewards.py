"""
rewards.py — from rubric verdicts to response rewards and token rewards.

Paper:    paper §3 (rubric-based rewards); METHOD.md §3 steps 2, 3 and 5.
Input:    prompts with rubrics, responses as text; rubric scores s (B, G, K) in {+1, −1};
          relevance weights w (B, G, K, T) in [0, 1] from discriminator.py
Output:   rubric scores + rubric mask (a judge), response rewards R (B, G), token rewards r = s·w (B, G, K, T)

Judges:   RuleJudge runs a Python checker per rubric type (verifiable rubrics: "start with 'boat'").
          Every judge is called the same way — judge(prompts, responses) -> (scores, rubric_mask) —
          so the training loop does not care which one it holds. LLMJudge asks a local causal LM a strict
          YES/NO question per (response, rubric); HybridJudge uses rule checkers where they exist, the LLM elsewhere.

Conventions:
  * s = +1 means the response satisfies the rubric, −1 that it does not; padded rubrics (prompts with
    fewer than K rubrics) carry s = 0 and rubric_mask = False.
  * An empty (or all-whitespace) response satisfies no rubric. An empty answer follows no instruction,
    and rewarding it would make "say nothing" a fixed point of RL (METHOD.md §10).
  * A checker that raises is a NO, and the reason is kept in judge.errors: a crash is never a silent pass.

Deviations from the paper: none in this file.

Demo:     python rewards.py
"""

from typing import Callable

import torch

# Dimension legend (identical in every file):
#   B prompts in the batch        G responses per prompt (group)     N = B*G responses, flattened
#   K rubrics per prompt          T response tokens, right-padded    V vocabulary size


def _check_scores(rubric_scores: torch.Tensor, rubric_mask: torch.Tensor | None = None) -> None:
    """Scores are +1/−1 on valid rubrics (0 is allowed only on padded ones, or anywhere without a mask)."""
    if not rubric_scores.is_floating_point():
        raise ValueError(f"rubric_scores must be a float tensor, got {rubric_scores.dtype}")
    allowed = (rubric_scores == 1) | (rubric_scores == -1)                       # (B, G, K)
    if rubric_mask is None and not bool((allowed | (rubric_scores == 0)).all()):
        raise ValueError("rubric_scores must be +1 (satisfied), -1 (violated) or 0 (padded rubric)")
    if rubric_mask is not None and not bool((allowed | ~rubric_mask[:, None, :]).all()):
        raise ValueError("rubric_scores must be +1 (satisfied) or -1 (violated) on every valid rubric")


def response_reward(rubric_scores: torch.Tensor, rubric_mask: torch.Tensor, how: str = "aon") -> torch.Tensor:
    """Response-level reward R from the per-rubric verdicts (METHOD.md §3 step 3).

    "aon"  all-or-nothing: R = 1 if every valid rubric passes, else 0 (the paper's default). Sparse:
           a response that passes 4 of 5 rubrics earns exactly what an empty one earns.
    "mean" constraint satisfaction rate (CSR): R = share of valid rubrics that pass.

    Shapes:
        rubric_scores  (B, G, K)  float  +1 / −1 (0 on padded rubrics)
        rubric_mask    (B, K)     bool   True on real rubrics
        returns        (B, G)     float  in [0, 1]

    Example:
        >>> s = torch.tensor([[[1., 1., -1.], [1., 1., 1.]]])     # B=1, G=2, K=3
        >>> m = torch.tensor([[True, True, True]])
        >>> response_reward(s, m, "aon")
        tensor([[0., 1.]])
        >>> response_reward(s, m, "mean")
        tensor([[0.6667, 1.0000]])
    """
    if rubric_scores.dim() != 3:
        raise ValueError(f"rubric_scores must be (B, G, K), got shape {tuple(rubric_scores.shape)}")
    if rubric_mask.dtype != torch.bool or rubric_mask.shape != (rubric_scores.shape[0], rubric_scores.shape[2]):
        raise ValueError(f"rubric_mask must be a bool (B, K) = {(rubric_scores.shape[0], rubric_scores.shape[2])}, "
                         f"got {rubric_mask.dtype} {tuple(rubric_mask.shape)}")
    if not bool(rubric_mask.any(dim=1).all()):
        raise ValueError("every prompt needs at least one rubric (a row of rubric_mask is all False)")
    _check_scores(rubric_scores, rubric_mask)
    valid = rubric_mask[:, None, :]                                              # (B, 1, K)
    passed = (rubric_scores > 0) & valid                                         # (B, G, K)
    n_valid = valid.sum(dim=2).to(rubric_scores.dtype)                           # (B, 1)
    n_passed = passed.sum(dim=2).to(rubric_scores.dtype)                         # (B, G)
    if how == "aon":
        return (n_passed == n_valid).to(rubric_scores.dtype)                     # (B, G)
    if how == "mean":
        return n_passed / n_valid                                                # (B, G)
    raise ValueError(f"unknown reward {how!r}; choose 'aon' or 'mean'")


def token_rewards(rubric_scores: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
    """Token reward r = s·w: each rubric's verdict credited to the tokens relevant to it (METHOD.md §3 step 5).

    A satisfied rubric (+1) rewards its relevant tokens, a violated one (−1) penalises them; tokens the
    discriminator calls irrelevant (w = 0) get nothing from that rubric.

    Shapes:
        rubric_scores  (B, G, K)     float  +1 / −1, 0 on padded rubrics
        relevance      (B, G, K, T)  float  w in [0, 1], 0 on padding; must stay float (METHOD.md §7 defect 2:
                                            storing w in an integer tensor truncates every soft weight to 0)
        returns        (B, G, K, T)  float

    Example:
        >>> s = torch.tensor([[[1., -1.]]])                               # B=1, G=1, K=2
        >>> w = torch.tensor([[[[0.3, 0.0, 1.0], [0.0, 0.9, 0.0]]]])      # T=3
        >>> token_rewards(s, w)
        tensor([[[[ 0.3000,  0.0000,  1.0000],
                  [-0.0000, -0.9000, -0.0000]]]])
    """
    if rubric_scores.dim() != 3 or relevance.dim() != 4 or relevance.shape[:3] != rubric_scores.shape:
        raise ValueError(f"expected rubric_scores (B, G, K) and relevance (B, G, K, T) with matching B, G, K; "
                         f"got {tuple(rubric_scores.shape)} and {tuple(relevance.shape)}")
    if not relevance.is_floating_point():
        raise ValueError(f"relevance must be a float tensor, got {relevance.dtype} "
                         "(an integer tensor would truncate soft weights to 0; METHOD.md §7 defect 2)")
    if bool((relevance < 0).any()) or bool((relevance > 1).any()):
        raise ValueError("relevance weights must lie in [0, 1]")
    _check_scores(rubric_scores)
    return rubric_scores[..., None] * relevance                                  # (B, G, K, T)


def pad_rubrics(prompts: list[dict]) -> tuple[int, torch.Tensor]:
    """K = the largest rubric count in the batch, and the (B, K) bool mask of real rubrics."""
    counts = [len(p.get("rubrics") or []) for p in prompts]
    if 0 in counts:
        raise ValueError(f"prompt {prompts[counts.index(0)].get('id', '?')!r} has no rubrics")
    return max(counts), torch.arange(max(counts))[None, :] < torch.tensor(counts)[:, None]  # K, (B, K)


class RuleJudge:
    """Judge verifiable rubrics with Python checkers: checkers[rubric["type"]](response, **rubric["args"]) -> bool.

    Call:     judge(prompts (B dicts with "rubrics"), responses (B lists of G strings))
    Returns:  scores (B, G, K) float32 in {+1, −1}, 0 on padded rubrics;  rubric_mask (B, K) bool
    Errors:   judge.errors collects {"prompt", "rubric", "reason"} for every checker that raised (a NO).
    """

    def __init__(self, checkers: dict[str, Callable[..., bool]]):
        self.checkers = checkers
        self.errors: list[dict] = []

    def verdict(self, rubric: dict, response: str, prompt_id: str = "?") -> bool:
        if not isinstance(rubric, dict) or "type" not in rubric:
            raise ValueError(f"prompt {prompt_id!r}: a rubric needs a 'type' (checker id), got {rubric!r}")
        checker = self.checkers.get(rubric["type"])
        if checker is None:
            raise ValueError(f"prompt {prompt_id!r}: unknown rubric type {rubric['type']!r}; "
                             f"known: {sorted(self.checkers)}")
        if not response.strip():
            return False                                 # an empty response satisfies no rubric
        try:
            return bool(checker(response, **rubric.get("args", {})))
        except Exception as error:                       # a crashed checker is a NO, never a silent pass
            self.errors.append({"prompt": prompt_id, "type": rubric["type"], "rubric": rubric.get("description", ""),
                                "reason": f"{type(error).__name__}: {error}"})
            return False

    def __call__(self, prompts: list[dict], responses: list[list[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        return judge_items(prompts, responses, lambda rubric: True, self, None)


# ============================================================================ LLM judge and hybrid judge
# For rubrics no code can verify ("the tone is formal") the paper asks an LLM (DeepSeek-V3.1) whether the response
# meets the criterion. Our wording is our own. Parsing is strict: only an answer that IS "YES" or "NO" (any case,
# surrounding spaces, markdown stars or one trailing "." / "!") counts; anything else is an unparsed answer, counted
# in judge.stats and scored NO. No substring matching: a parser that looks for "no" inside the answer reads
# "I don't know" as a verdict (k-NO-w), and one that looks for "yes" rewards "yes and no".
JUDGE_PROMPT = ("You are a strict grader. Decide whether the response below satisfies the criterion.\n\n"
                "Criterion: {criterion}\n\nResponse:\n{response}\n\n"
                "Answer YES only if the response fully satisfies the criterion; if it does not, or if you are unsure, "
                "answer NO. Reply with exactly one word: YES or NO.")


def parse_verdict(answer: str) -> bool | None:
    """True for YES, False for NO, None for anything else (never a substring match).

    >>> [parse_verdict(a) for a in ["YES", " no.", "**Yes**", "I don't know", "No, because", "yes and no"]]
    [True, False, True, None, None, None]
    """
    word = answer.strip().strip("*").strip()
    if word[-1:] in (".", "!"):
        word = word[:-1]
    return {"YES": True, "NO": False}.get(word.upper())


class LLMJudge:
    """Judge each (response, rubric) pair by asking a local causal LM the JUDGE_PROMPT question, greedily, in batches.

    Call:     judge(prompts (B dicts with "rubrics"), responses (B lists of G strings))
    Returns:  scores (B, G, K) float32 in {+1, −1}, 0 on padded rubrics;  rubric_mask (B, K) bool
    Logs:     judge.log gets {"prompt", "rubric", "answer" (raw text), "verdict"} per question;
              judge.stats counts "yes", "no", "unparsed" (scored NO) and "empty" (empty responses, NO unasked).
    The model stops at tokenizer.eos_token_id: for a chat model make that the end-of-turn token first
    (policies.use_chat_eos does). A rubric's criterion is its "description".
    """

    def __init__(self, model, tokenizer, batch_size: int = 16, max_new_tokens: int = 4):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.log: list[dict] = []
        self.stats = {"yes": 0, "no": 0, "unparsed": 0, "empty": 0}

    def question_text(self, criterion: str, response: str) -> str:
        question = JUDGE_PROMPT.format(criterion=criterion, response=response)
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                                      add_generation_prompt=True)
        return question

    @torch.no_grad()
    def answer(self, questions: list[str]) -> list[str]:
        """Raw greedy answers of the model, one per question text."""
        tok = self.tokenizer
        answers = []
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        for start in range(0, len(questions), self.batch_size):
            batch = tok(questions[start:start + self.batch_size], add_special_tokens=False, padding=True,
                        padding_side="left", return_tensors="pt").to(next(self.model.parameters()).device)  # (n, P)
            out = self.model.generate(**batch, do_sample=False, max_new_tokens=self.max_new_tokens, pad_token_id=pad_id,
                                      eos_token_id=tok.eos_token_id)                                  # (n, P + t)
            answers += tok.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        return answers

    def verdicts(self, items: list[tuple[str, dict, str]]) -> list[bool]:
        """Verdicts for (prompt id, rubric, response) items; empty responses are NO without a question."""
        asked = [i for i, (_, _, response) in enumerate(items) if response.strip()]
        answers = self.answer([self.question_text(items[i][1].get("description", ""), items[i][2]) for i in asked])
        result = [False] * len(items)
        self.stats["empty"] += len(items) - len(asked)
        for i, raw in zip(asked, answers):
            verdict = parse_verdict(raw)
            self.stats["unparsed" if verdict is None else "yes" if verdict else "no"] += 1
            self.log.append({"prompt": items[i][0], "rubric": items[i][1].get("description", ""), "answer": raw,
                             "verdict": bool(verdict)})
            result[i] = bool(verdict)
        return result

    def __call__(self, prompts: list[dict], responses: list[list[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        return judge_items(prompts, responses, lambda rubric: False, None, self)


class HybridJudge:
    """Rule checkers where a rubric's "type" has one, the LLM judge for the rest (type "llm" or unknown). Called as
    RuleJudge; judge.rule.errors and judge.llm.log / .stats keep each side's records."""

    def __init__(self, checkers: dict[str, Callable[..., bool]], llm_judge: LLMJudge):
        self.rule = RuleJudge(checkers)
        self.llm = llm_judge

    def __call__(self, prompts: list[dict], responses: list[list[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        return judge_items(prompts, responses, lambda rubric: rubric.get("type") in self.rule.checkers, self.rule,
                           self.llm)


def judge_items(prompts: list[dict], responses: list[list[str]], by_rule: Callable[[dict], bool],
                rule: RuleJudge | None, llm: LLMJudge | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fill scores (B, G, K): rubrics with by_rule(rubric) go to rule.verdict, all others to llm in one batch."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} groups of responses")
    group_sizes = {len(group) for group in responses}
    if len(group_sizes) != 1:
        raise ValueError(f"every prompt needs the same number of responses G, got sizes {sorted(group_sizes)}")
    k_max, rubric_mask = pad_rubrics(prompts)
    scores = torch.zeros(len(prompts), group_sizes.pop(), k_max)                  # (B, G, K)
    index = []
    items = []
    for b, (prompt, group) in enumerate(zip(prompts, responses)):
        prompt_id = prompt.get("id", str(b))
        for g, response in enumerate(group):
            for k, rubric in enumerate(prompt["rubrics"]):
                if by_rule(rubric):
                    scores[b, g, k] = 1.0 if rule.verdict(rubric, response, prompt_id) else -1.0
                else:
                    index.append((b, g, k))
                    items.append((prompt_id, rubric, response))
    for (b, g, k), verdict in zip(index, llm.verdicts(items) if items else []):
        scores[b, g, k] = 1.0 if verdict else -1.0
    return scores, rubric_mask


if __name__ == "__main__":
    checkers = {
        "starts_with": lambda response, word: response.split()[0] == word,
        "exclude": lambda response, word: word not in response.split(),
    }
    prompts = [{"id": "p0", "rubrics": [
        {"type": "starts_with", "args": {"word": "boat"}, "description": "Start with the word 'boat'."},
        {"type": "exclude", "args": {"word": "rain"}, "description": "Do not use the word 'rain'."}]}]
    responses = [["boat on the sea", "rain on the boat", "boat in the rain"]]
    judge = RuleJudge(checkers)
    scores, rubric_mask = judge(prompts, responses)
    print("responses:", responses[0])
    print("rubric scores s (B, G, K):\n", scores)
    print("response reward, aon  (B, G):", response_reward(scores, rubric_mask, "aon"))
    print("response reward, mean (B, G):", response_reward(scores, rubric_mask, "mean"))
    relevance = torch.tensor([[[1., 0., 0., 0.], [0., 0., 0., 0.]],            # response 0: 'boat' starts it
                              [[1., 0., 0., 0.], [1., 0., 0., 0.]],            # response 1: 'rain' breaks both
                              [[1., 0., 0., 0.], [0., 0., 0., 1.]]])[None]     # response 2: 'rain' at the end
    print("relevance w (B, G, K, T):", tuple(relevance.shape))
    print("token rewards r = s·w (B, G, K, T):\n", token_rewards(scores, relevance))
