"""
eval.py — instruction-level and rubric-level accuracy of a policy, with greedy and sampled decoding.

Paper:    RTT §5 (evaluation metrics on IFEval / IFBench / MulDimIF); RTT_SPEC.md §7 (metrics) and §8 (report
          sampled as well as greedy accuracy on held-out prompts, so methods can be told apart).
Input:    a policy and its tokenizer (policy.py), prompt dicts with rubrics (data.py), a judge
          judge(prompts (B), responses (B x G strings)) -> (scores (B, G, K) in {+1, −1}, rubric_mask (B, K)),
          the same rewards.RuleJudge(data.CHECKERS) that training uses
Output:   {"n_prompts", "instruction_accuracy", "rubric_accuracy" (the sampled numbers, the headline),
           "greedy": report, "sampled": report}; a report is
          {"instruction_accuracy", "instruction_accuracy_ci95", "rubric_accuracy", "rubric_accuracy_ci95",
           "per_type", "mean_length", "n_responses"}

Metrics.  instruction-level accuracy = share of responses that pass EVERY rubric of their prompt (the
          response-level all-or-nothing verdict); rubric-level accuracy = share of (response, rubric) pairs
          that pass, pooled over all rubrics of all responses (micro average: a prompt with 6 rubrics
          weighs more than one with 3); per_type = the same micro average restricted to one rubric type;
          mean_length = mean number of whitespace-separated words per response.
Decoding. greedy: one response per prompt (argmax decoding is deterministic, so more would be copies);
          sampled: n_samples responses per prompt at the given temperature / top-p / top-k, drawn with one
          torch.Generator seeded by `seed` (the same seed and batch_size give the same numbers).
Interval. 95% normal-approximation interval over PROMPTS, the independent units (the responses of one
          prompt share its rubrics and are correlated). With n_b responses (or (response, rubric) pairs)
          and p_b passes for prompt b, the accuracy is the ratio r = Σ_b p_b / Σ_b n_b and its standard
          error by the delta method is  se = sqrt(Σ_b (p_b − r·n_b)² / (B·(B − 1))) / mean_b(n_b)  — with
          equal n_b this is the usual std of the per-prompt accuracies / sqrt(B). Interval r ± 1.96·se,
          clipped to [0, 1]; with fewer than 2 prompts nothing is known about the spread: [0, 1].

Deviations from the paper:
  1. Rule-checked Rubric World prompts instead of IFEval / IFBench / MulDimIF with an LLM judge; the
     paper reports no intervals, we do.

Demo:     python eval.py                                  # warm-start toy policy, test split, table
          python eval.py --checkpoint out/toy/ckpt.pt --split test_unseen_combos --json out/eval.json
          python eval.py --responses answers.jsonl       # score existing responses without generating
"""

import json
import math
import os
import sys
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from tqdm import tqdm
from transformers import HfArgumentParser

import data
import policy as policy_lib
import real_models
from rewards import RuleJudge

# Dimension legend (identical in every file):
#   B prompts in the batch        G responses per prompt (group)     N = B*G responses, flattened
#   K rubrics per prompt          T response tokens, right-padded    V vocabulary size

Z_95 = 1.959964                                  # two-sided 95% quantile of the standard normal
SPLITS = ("test", "val", "test_unseen_combos", "train")


# ----------------------------------------------------------------------------- statistics
def ratio_ci95(passed: torch.Tensor, total: torch.Tensor) -> tuple[float, list[float]]:
    """Pooled accuracy r = Σ passed / Σ total and its 95% interval over prompts (delta method, see card).

    Shapes:  passed (B,) float, total (B,) float > 0  ->  (r, [lo, hi])

    >>> ratio_ci95(torch.tensor([1., 0., 1., 0.]), torch.ones(4))
    (0.5, [0.0, 1.0])
    >>> ratio_ci95(torch.tensor([2., 2.]), torch.tensor([2., 2.]))
    (1.0, [1.0, 1.0])
    """
    if passed.dim() != 1 or passed.shape != total.shape or bool((total <= 0).any()):
        raise ValueError(f"need passed (B,) and total (B,) > 0, got {tuple(passed.shape)} and {tuple(total.shape)}")
    passed, total = passed.double(), total.double()
    ratio = float(passed.sum() / total.sum())                                    # r
    n_prompts = passed.shape[0]
    if n_prompts < 2:
        return ratio, [0.0, 1.0]
    residual = passed - ratio * total                                            # (B,)  p_b − r·n_b
    se = math.sqrt(float((residual ** 2).sum()) / (n_prompts * (n_prompts - 1))) / float(total.mean())
    return ratio, [max(0.0, ratio - Z_95 * se), min(1.0, ratio + Z_95 * se)]


def accuracy_report(prompts: list[dict], responses: list[list[str]], judge) -> dict:
    """Accuracies of B groups of responses (a group may hold any number >= 1 of responses).

    Shapes:  prompts B dicts; responses B lists of strings  ->  a report dict (see the reading card)
    """
    if len(prompts) != len(responses) or not prompts:
        raise ValueError(f"need one non-empty group of responses per prompt, got {len(prompts)} prompts "
                         f"and {len(responses)} groups")
    by_group_size = defaultdict(list)                       # the judge needs one G per call: batch by G
    for b, (prompt, group) in enumerate(zip(prompts, responses)):
        if not group:
            raise ValueError(f"prompt {prompt.get('id', '?')!r} has no responses")
        by_group_size[len(group)].append(b)
    passed_by_prompt = {}
    for rows in by_group_size.values():
        scores, _ = judge([prompts[b] for b in rows], [responses[b] for b in rows])   # (B', G, K)
        for row, b in enumerate(rows):
            passed_by_prompt[b] = scores[row, :, :len(prompts[b]["rubrics"])] > 0    # (G, K_b) bool
    resp_passed, resp_total, rubric_passed, rubric_total = [], [], [], []
    type_passed, type_total = defaultdict(int), defaultdict(int)
    for b, prompt in enumerate(prompts):
        passed = passed_by_prompt[b]                                             # (G, K_b) bool
        resp_passed.append(float(passed.all(dim=1).sum()))
        resp_total.append(float(passed.shape[0]))
        rubric_passed.append(float(passed.sum()))
        rubric_total.append(float(passed.numel()))
        for k, rubric in enumerate(prompt["rubrics"]):
            type_passed[rubric["type"]] += int(passed[:, k].sum())
            type_total[rubric["type"]] += passed.shape[0]
    instruction_accuracy, instruction_ci = ratio_ci95(torch.tensor(resp_passed), torch.tensor(resp_total))
    rubric_accuracy, rubric_ci = ratio_ci95(torch.tensor(rubric_passed), torch.tensor(rubric_total))
    lengths = [len(text.split()) for group in responses for text in group]
    return {"instruction_accuracy": instruction_accuracy, "instruction_accuracy_ci95": instruction_ci,
            "rubric_accuracy": rubric_accuracy, "rubric_accuracy_ci95": rubric_ci,
            "per_type": {t: type_passed[t] / type_total[t] for t in sorted(type_total)},
            "mean_length": sum(lengths) / len(lengths), "n_responses": len(lengths)}


# ----------------------------------------------------------------------------- generate and score
@torch.no_grad()
def evaluate(model, tokenizer, prompts: list[dict], judge, n_samples: int = 4,
             max_new_tokens: int = policy_lib.MAX_NEW_TOKENS, seed: int = 0, batch_size: int = 64,
             temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, progress: bool = False) -> dict:
    """Greedy (1 response per prompt) and sampled (n_samples per prompt) accuracy of a policy on prompts.

    The top-level instruction_accuracy / rubric_accuracy are the SAMPLED numbers: greedy decoding of a
    small policy saturates early and hides differences between training methods (RTT_SPEC §8).
    """
    if not prompts:
        raise ValueError("evaluate() needs at least one prompt")
    if n_samples < 1 or batch_size < 1:
        raise ValueError(f"n_samples and batch_size must be >= 1, got {n_samples} and {batch_size}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    texts = {"greedy": [], "sampled": []}
    batches = range(0, len(prompts), batch_size)
    for start in tqdm(batches, desc="eval", unit="batch", disable=not progress):
        prompt_ids = policy_lib.encode_prompts(tokenizer, prompts[start:start + batch_size])
        for mode, group_size in (("greedy", 1), ("sampled", n_samples)):
            response_ids, token_mask = policy_lib.generate(
                model, tokenizer, prompt_ids, group_size, max_new_tokens, temperature, top_p, top_k,
                greedy=mode == "greedy", generator=generator)                    # (B, G, T), (B, G, T)
            texts[mode] += policy_lib.decode_responses(tokenizer, response_ids, token_mask)
    model.train(was_training)
    reports = {mode: accuracy_report(prompts, texts[mode], judge) for mode in texts}
    return {"n_prompts": len(prompts), "instruction_accuracy": reports["sampled"]["instruction_accuracy"],
            "rubric_accuracy": reports["sampled"]["rubric_accuracy"], **reports}


def score_responses(prompts: list[dict], responses: list[dict], judge) -> dict:
    """Accuracy of existing responses: rows {"id" or "prompt", "response"} matched to `prompts`.

    A row is matched by its "id", else by its exact "prompt" text. Prompts without a row are left out
    (n_prompts counts the prompts that have at least one response). Returns {"n_prompts", **report}.
    """
    by_id = {p["id"]: i for i, p in enumerate(prompts)}
    by_text = {p["prompt"]: i for i, p in enumerate(prompts)}
    groups = defaultdict(list)
    for line, row in enumerate(responses, start=1):
        if not isinstance(row, dict):
            raise ValueError(f"row {line}: expected an object {{'id' or 'prompt', 'response'}}, "
                             f"got {type(row).__name__}")
        if not isinstance(row.get("response"), str):
            raise ValueError(f"row {line}: needs a string field 'response', got keys {sorted(row)}")
        if "id" in row:
            if row["id"] not in by_id:
                raise ValueError(f"row {line}: unknown prompt id {row['id']!r} (not among the {len(prompts)} "
                                 f"prompts, e.g. {prompts[0]['id']!r})")
            groups[by_id[row["id"]]].append(row["response"])
        elif "prompt" in row:
            if row["prompt"] not in by_text:
                raise ValueError(f"row {line}: prompt text {row['prompt'][:60]!r}... matches no prompt")
            groups[by_text[row["prompt"]]].append(row["response"])
        else:
            raise ValueError(f"row {line}: needs an 'id' or a 'prompt' field to match it to a prompt")
    if not groups:
        raise ValueError("no responses to score")
    order = sorted(groups)
    report = accuracy_report([prompts[i] for i in order], [groups[i] for i in order], judge)
    return {"n_prompts": len(order), **report}


# ----------------------------------------------------------------------------- files and checkpoints
def read_jsonl(path: str) -> list[dict]:
    """Rows of a JSON-lines file (blank lines skipped); ValueError naming the line that is not JSON."""
    rows = []
    with open(path) as f:
        for line_no, line in enumerate(f, start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}:{line_no}: not valid JSON ({error.msg})") from error
    return rows


def write_json(path: str, obj: dict) -> None:
    """Write JSON atomically: a temp file next to `path`, then os.replace."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def load_checkpoint_policy(path: str | None, device: str = "cpu"):
    """(model, tokenizer): the warm-start toy policy (path None), a save_pretrained dir, or train.py's ckpt.pt.

    A ckpt.pt holds {"policy": state_dict, "config": {...}}; its weights are loaded into the policy the run
    started from (config["policy"]: "toy" or a save_pretrained dir). Any failure is a SystemExit that says why.
    """
    if path is None:
        return policy_lib.load_or_build_toy_policy(device=device)
    if os.path.isdir(path):
        try:
            return policy_lib.load_policy(path, device)
        except ValueError as error:
            raise SystemExit(str(error)) from error
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise SystemExit(f"cannot read checkpoint {path!r}: {type(error).__name__}: {error}") from error
    if not isinstance(state, dict) or not isinstance(state.get("policy"), dict):
        raise SystemExit(f"{path!r} is not a train.py checkpoint (no 'policy' state dict)")
    source = (state.get("config") or {}).get("policy", "toy")
    try:                                                 # a real policy loads as train.py loaded it (chat eos, pad)
        model, tokenizer = (policy_lib.load_or_build_toy_policy(device=device) if source == "toy"
                            else real_models.load_policy(source, device))
        model.load_state_dict(state["policy"])
    except (OSError, RuntimeError, ValueError) as error:
        raise SystemExit(f"checkpoint {path!r} does not fit its policy {source!r}: {error}") from error
    return model.eval(), tokenizer


# ----------------------------------------------------------------------------- command line
@dataclass
class EvalArgs:
    checkpoint: str | None = field(default=None, metadata={"help": "save_pretrained dir or train.py ckpt.pt "
                                                                   "(default: the warm-start toy policy)"})
    split: str = field(default="test", metadata={"help": f"Rubric World split: {' | '.join(SPLITS)}"})
    samples: int = field(default=4, metadata={"help": "sampled responses per prompt"})
    json: str | None = field(default=None, metadata={"help": "write the results to this JSON file"})
    responses: str | None = field(default=None, metadata={"help": "JSONL of {'id' or 'prompt', 'response'} "
                                                                  "rows to score instead of generating"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling"})
    top_k: int = field(default=0, metadata={"help": "top-k sampling (0 = off)"})
    max_new_tokens: int = field(default=policy_lib.MAX_NEW_TOKENS, metadata={"help": "response length cap"})
    batch_size: int = field(default=64, metadata={"help": "prompts per generation batch"})
    device: str = field(default="cpu", metadata={"help": "torch device"})


def print_table(result: dict, modes: tuple[str, ...]) -> None:
    rows = [(mode, result[mode]) for mode in modes]
    print(f"{'decoding':>10} | {'instruction acc [95% CI]':>26} | {'rubric acc [95% CI]':>26} | mean words | responses")
    for mode, r in rows:
        ci_i, ci_r = r["instruction_accuracy_ci95"], r["rubric_accuracy_ci95"]
        print(f"{mode:>10} | {r['instruction_accuracy']:.3f} [{ci_i[0]:.3f}, {ci_i[1]:.3f}]{'':>6} | "
              f"{r['rubric_accuracy']:.3f} [{ci_r[0]:.3f}, {ci_r[1]:.3f}]{'':>6} | {r['mean_length']:10.1f} | "
              f"{r['n_responses']}")
    types = sorted(rows[0][1]["per_type"])
    print(f"{'per type':>10} | " + " ".join(f"{t:>11}" for t in types))
    for mode, r in rows:
        print(f"{mode:>10} | " + " ".join(f"{r['per_type'].get(t, float('nan')):11.3f}" for t in types))


def main(argv: list[str]) -> dict:
    args, = HfArgumentParser(EvalArgs).parse_args_into_dataclasses(argv)
    if args.split not in SPLITS:
        raise SystemExit(f"unknown split {args.split!r}; choose one of {SPLITS}")
    prompts = data.make_splits(seed=0)[args.split]
    judge = RuleJudge(data.CHECKERS)
    if args.responses:
        try:
            result = score_responses(prompts, read_jsonl(args.responses), judge)
        except (OSError, ValueError) as error:
            raise SystemExit(f"cannot score {args.responses!r}: {error}") from error
        print(f"scored {result['n_responses']} responses to {result['n_prompts']} prompts of the {args.split} split")
        print_table({"responses": result}, ("responses",))
    else:
        model, tokenizer = load_checkpoint_policy(args.checkpoint, args.device)
        result = evaluate(model, tokenizer, prompts, judge, n_samples=args.samples,
                          max_new_tokens=args.max_new_tokens, seed=args.seed, batch_size=args.batch_size,
                          temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, progress=True)
        print(f"{args.checkpoint or 'warm-start toy policy'} on the {args.split} split: {result['n_prompts']} prompts")
        print_table(result, ("greedy", "sampled"))
    result = {**result, "split": args.split, "checkpoint": args.checkpoint, "responses_file": args.responses}
    if args.json:
        write_json(args.json, result)
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
