"""
eval.py — instruction-level and rubric-level accuracy of a policy (or of saved responses), with 95% intervals.

Paper:    paper §5 (IFEval / IFBench / MulDimIF); METHOD.md §8 (metrics) and §10 (report sampled as well as greedy
          accuracy on held-out prompts, so methods can be told apart).
Input:    a policy (the toy, smollm2, a directory, or a train.py checkpoint: evaluated on ITS data with ITS judge),
          or a JSONL of responses; prompt dicts with rubrics (tasks.py); a judge
          judge(prompts (B), responses (B x G strings)) -> (scores (B, G, K) in {+1, −1}, rubric_mask (B, K))
Output:   a report per (judge, decoding): {"instruction_accuracy", "instruction_accuracy_ci95", "rubric_accuracy",
          "rubric_accuracy_ci95", "per_type", "mean_words", "n_responses", "checker_errors"}; --json writes them,
          --items one
          JSONL row per prompt with every response and its per-rubric verdicts

Metrics.  instruction-level accuracy = share of responses that pass EVERY rubric of their prompt (IFEval calls
          it "prompt-level"); rubric-level accuracy = share of (response, rubric) pairs that pass, pooled over
          all rubrics (micro average; IFEval's "instruction-level"); per_type = rubric-level accuracy of one
          rubric type; mean_words = mean number of whitespace-separated words per response.
Decoding. greedy: one response per prompt (argmax decoding is deterministic, so more would be copies);
          sampled: n_samples responses per prompt, drawn with one torch.Generator seeded by `seed`. Every
          generation runs in chunks of at most `max_batch_tokens` sequence positions (rollout.generate).
Judges.   IFEval and IFBench are scored strict and loose (their libraries' two tests); Rubric World by its rule
          checkers; a checkpoint's own data by the judge it trained with. A checker that raises scores NO, and the
          number of such calls per rubric type is reported ("checker_errors"), never hidden.
Interval. 95% normal-approximation interval over PROMPTS, the independent units (the responses of one
          prompt share its rubrics and are correlated). With n_b responses (or (response, rubric) pairs)
          and p_b passes for prompt b, the accuracy is the ratio r = Σ_b p_b / Σ_b n_b and its standard
          error by the delta method is  se = sqrt(Σ_b (p_b − r·n_b)² / (B·(B − 1))) / mean_b(n_b)  — with
          equal n_b this is the usual std of the per-prompt accuracies / sqrt(B). Interval r ± 1.96·se,
          clipped to [0, 1]; with fewer than 2 prompts nothing is known about the spread: [0, 1]. Two evaluations
          of the same prompts (--compare) are compared paired: the same formula on the per-prompt differences.

Additions:  the paper reports no intervals; we do. Rubric World is scored by rule checkers (deviation 5).

Demo:     python eval.py                                             # warm-start toy policy, Rubric World test split
          python eval.py --checkpoint out/toy/ckpt.pt --json out/eval.json
          python eval.py --data ifeval --split all --policy smollm2  # a benchmark (ifeval, ifbench), strict and loose
          python eval.py --data ifeval --split all --responses answers.jsonl   # score responses, no generation
          python eval.py --compare before.items.jsonl after.items.jsonl       # after − before, paired by prompt
"""

import math
import sys
import time
from argparse import ArgumentDefaultsHelpFormatter
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import torch
from transformers import HfArgumentParser

from policies.loading import load_checkpoint_policy, load_policy, pick_device
from policies.rollout import UNLIMITED, decode_responses, encode_prompts, generate
from runs.checkpoints import read_checkpoint
from runs.files import read_jsonl, write_json, write_jsonl
from tasks import registry
from tasks.rubric_world import MAX_NEW_TOKENS

# Dimension legend (identical in every file):
#   B prompts in the batch        G responses per prompt (group)     N = B*G responses, flattened
#   K rubrics per prompt          T response tokens, right-padded    V vocabulary size

Z_95 = 1.959964                                  # two-sided 95% quantile of the standard normal


# ----------------------------------------------------------------------------- statistics
def ratio_se(passed: torch.Tensor, total: torch.Tensor) -> tuple[float, float]:
    """Pooled ratio r = Σ passed / Σ total and its standard error over prompts (delta method, see card); se is nan
    with fewer than 2 prompts. Shapes: passed (B,) float, total (B,) float > 0."""
    if passed.dim() != 1 or passed.shape != total.shape or bool((total <= 0).any()):
        raise ValueError(f"need passed (B,) and total (B,) > 0, got {tuple(passed.shape)} and {tuple(total.shape)}")
    passed = passed.double()
    total = total.double()
    ratio = float(passed.sum() / total.sum())                                    # r
    n_prompts = passed.shape[0]
    if n_prompts < 2:
        return ratio, math.nan
    residual = passed - ratio * total                                            # (B,)  p_b − r·n_b
    return ratio, math.sqrt(float((residual ** 2).sum()) / (n_prompts * (n_prompts - 1))) / float(total.mean())


def ratio_ci95(passed: torch.Tensor, total: torch.Tensor) -> tuple[float, list[float]]:
    """Pooled accuracy r = Σ passed / Σ total and its 95% interval over prompts (delta method, see card).

    Shapes:  passed (B,) float, total (B,) float > 0  ->  (r, [lo, hi])

    >>> ratio_ci95(torch.tensor([1., 0., 1., 0.]), torch.ones(4))
    (0.5, [0.0, 1.0])
    >>> ratio_ci95(torch.tensor([2., 2.]), torch.tensor([2., 2.]))
    (1.0, [1.0, 1.0])
    """
    ratio, se = ratio_se(passed, total)
    if math.isnan(se):
        return ratio, [0.0, 1.0]
    return ratio, [max(0.0, ratio - Z_95 * se), min(1.0, ratio + Z_95 * se)]


def difference_ci95(after: torch.Tensor, before: torch.Tensor, total: torch.Tensor) -> tuple[float, list[float]]:
    """Paired difference of two accuracies on the same prompts, Δ = Σ (a_b − p_b) / Σ n_b, and its 95% interval over
    prompts: the delta method of the card applied to the per-prompt differences a_b − p_b, so the prompts' shared
    difficulty cancels (an unpaired interval would add both accuracies' spreads).

    Shapes:  after (B,), before (B,) passes, total (B,) > 0  ->  (Δ, [lo, hi]) within [−1, 1]

    >>> after = torch.tensor([1., 1., 0., 1.])
    >>> before = torch.tensor([0., 1., 0., 1.])                                   # one prompt of 4 gained
    >>> difference, interval = difference_ci95(after, before, torch.ones(4))
    >>> difference, [round(end, 3) for end in interval]
    (0.25, [-0.24, 0.74])
    """
    difference, se = ratio_se(after - before, total)
    if math.isnan(se):
        return difference, [-1.0, 1.0]
    return difference, [max(-1.0, difference - Z_95 * se), min(1.0, difference + Z_95 * se)]


def verdicts(prompts: list[dict], responses: list[list[str]], judge) -> list[torch.Tensor]:
    """Per prompt b, a (G_b, K_b) bool tensor: does response g pass rubric k? Groups may differ in size."""
    if len(prompts) != len(responses) or not prompts:
        raise ValueError(f"need one non-empty group of responses per prompt, got {len(prompts)} prompts "
                         f"and {len(responses)} groups")
    by_group_size = defaultdict(list)                       # the judge needs one G per call: batch by G
    for b, (prompt, group) in enumerate(zip(prompts, responses)):
        if not group:
            raise ValueError(f"prompt {prompt.get('id', '?')!r} has no responses")
        by_group_size[len(group)].append(b)
    passed = [torch.zeros(0)] * len(prompts)
    for rows in by_group_size.values():
        scores, _ = judge([prompts[b] for b in rows], [responses[b] for b in rows])   # (B', G, K)
        for row, b in enumerate(rows):
            passed[b] = scores[row, :, :len(prompts[b]["rubrics"])] > 0          # (G, K_b)
    return passed


def accuracy_report(prompts: list[dict], responses: list[list[str]], judge) -> dict:
    """Accuracies of B groups of responses (a group may hold any number >= 1 of responses), see the card, and the
    checker calls that raised (scored NO) per rubric type."""
    errors_before = len(getattr(judge, "errors", []))
    passed = verdicts(prompts, responses, judge)
    type_passed = defaultdict(int)
    type_total = defaultdict(int)
    for prompt, table in zip(prompts, passed):
        for k, rubric in enumerate(prompt["rubrics"]):
            type_passed[rubric["type"]] += int(table[:, k].sum())
            type_total[rubric["type"]] += table.shape[0]
    instruction, instruction_ci = ratio_ci95(torch.tensor([float(t.all(dim=1).sum()) for t in passed]),
                                             torch.tensor([float(t.shape[0]) for t in passed]))
    rubric, rubric_ci = ratio_ci95(torch.tensor([float(t.sum()) for t in passed]),
                                   torch.tensor([float(t.numel()) for t in passed]))
    lengths = [len(text.split()) for group in responses for text in group]
    return {"instruction_accuracy": instruction, "instruction_accuracy_ci95": instruction_ci,
            "rubric_accuracy": rubric, "rubric_accuracy_ci95": rubric_ci,
            "per_type": {t: type_passed[t] / type_total[t] for t in sorted(type_total)},
            "mean_words": sum(lengths) / len(lengths), "n_responses": len(lengths),
            "checker_errors": dict(Counter(error["type"] for error in getattr(judge, "errors", [])[errors_before:]))}


# ----------------------------------------------------------------------------- generate and score
@torch.no_grad()
def generate_texts(model, tokenizer, prompts: list[dict], n_samples: int, max_new_tokens: int, seed: int = 0,
                   max_batch_tokens: int = UNLIMITED, progress: bool = False, **sampling) -> dict[str, list]:
    """{"greedy": B lists of 1 text, "sampled": B lists of n_samples texts (absent when n_samples is 0)}; prompts go
    through rollout.generate in chunks of at most max_batch_tokens positions (KV cache included). `sampling`:
    temperature, top_p, top_k. The model's train/eval mode is restored afterwards."""
    if not prompts:
        raise ValueError("evaluation needs at least one prompt")
    if n_samples < 0:
        raise ValueError(f"n_samples must be >= 0, got {n_samples}")
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    prompt_ids = encode_prompts(tokenizer, prompts)
    texts = {}
    for mode, group_size in (("greedy", 1), ("sampled", n_samples)) if n_samples else (("greedy", 1),):
        response_ids, token_mask = generate(model, tokenizer, prompt_ids, group_size, max_new_tokens, max_batch_tokens,
                                            greedy=mode == "greedy", generator=generator,
                                            progress=f"eval {mode}" if progress else "", **sampling)  # (B, G, T)
        texts[mode] = decode_responses(tokenizer, response_ids, token_mask)
    model.train(was_training)
    return texts


def evaluate(model, tokenizer, prompts: list[dict], judge, n_samples: int = 4,
             max_new_tokens: int = MAX_NEW_TOKENS,
             seed: int = 0, max_batch_tokens: int = UNLIMITED, progress: bool = False, **sampling) -> dict:
    """Greedy (1 response per prompt) and sampled (n_samples per prompt) accuracy of a policy on prompts.

    The top-level instruction_accuracy / rubric_accuracy are the SAMPLED numbers: greedy decoding of a
    small policy saturates early and hides differences between training methods (METHOD.md §10).
    """
    texts = generate_texts(model, tokenizer, prompts, n_samples, max_new_tokens, seed, max_batch_tokens, progress,
                           **sampling)
    reports = {mode: accuracy_report(prompts, group, judge) for mode, group in texts.items()}
    headline = reports["sampled" if n_samples else "greedy"]
    return {"n_prompts": len(prompts), "instruction_accuracy": headline["instruction_accuracy"],
            "rubric_accuracy": headline["rubric_accuracy"], **reports}


def group_rows(prompts: list[dict], rows: list[dict]) -> tuple[list[dict], list[list[str]]]:
    """Existing responses, rows {"id" or "prompt", "response"}, grouped by prompt: (prompts with a row, groups).
    A row is matched by its "id", else by its exact "prompt" text; ValueError naming the bad row."""
    by_id = {p["id"]: i for i, p in enumerate(prompts)}
    by_text = {p["prompt"]: i for i, p in enumerate(prompts)}
    groups = defaultdict(list)
    for line, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise ValueError(f"row {line}: expected an object {{'id' or 'prompt', 'response'}}, "
                             f"got {type(row).__name__}")
        if not isinstance(row.get("response"), str):
            raise ValueError(f"row {line}: needs a string field 'response', got keys {sorted(row)}")
        if "id" not in row and "prompt" not in row:
            raise ValueError(f"row {line}: needs an 'id' or a 'prompt' field to match it to a prompt")
        index = by_id.get(str(row["id"])) if "id" in row else by_text.get(row["prompt"])
        if index is None:
            raise ValueError(f"row {line}: unknown prompt id {row['id']!r} (e.g. {prompts[0]['id']!r})" if "id" in row
                             else f"row {line}: prompt text {row['prompt'][:60]!r}... matches no prompt")
        groups[index].append(row["response"])
    if not groups:
        raise ValueError("no responses to score")
    return [prompts[i] for i in sorted(groups)], [groups[i] for i in sorted(groups)]


def item_rows(prompts: list[dict], texts: dict[str, list], judges: dict) -> list[dict]:
    """One row per prompt for inspection: every response with each judge's per-rubric verdicts."""
    tables = {(mode, name): verdicts(prompts, groups, judge) for mode, groups in texts.items()
              for name, judge in judges.items()}
    return [{"id": p["id"], "prompt": p["prompt"], "rubrics": [r["type"] for r in p["rubrics"]],
             "responses": [{"decoding": mode, "text": text,
                            **{name: tables[mode, name][b][g].tolist() for name in judges}}
                           for mode, groups in texts.items() for g, text in enumerate(groups[b])]}
            for b, p in enumerate(prompts)]


def item_passes(rows: list[dict], judge: str, decoding: str) -> torch.Tensor:
    """Per prompt of an --items file, for one judge and decoding: (B, 4) float64 columns = responses passing every
    rubric, responses, passing (response, rubric) pairs, pairs."""
    table = []
    for row in rows:
        votes = [response[judge] for response in row["responses"] if response["decoding"] == decoding]   # (G_b, K_b)
        if not votes:
            raise ValueError(f"prompt {row['id']!r} has no {decoding} responses")
        table.append([sum(all(v) for v in votes), len(votes), sum(map(sum, votes)), sum(map(len, votes))])
    return torch.tensor(table, dtype=torch.float64)


def compare_items(before: list[dict], after: list[dict]) -> dict:
    """After − before, paired by prompt, from two --items files: {judge: {decoding: {"instruction_accuracy": Δ,
    "instruction_accuracy_ci95", "rubric_accuracy", "rubric_accuracy_ci95", and each side's accuracy and interval
    as "before_…" / "after_…"}}} for every judge and decoding both files hold. ValueError unless the files hold the
    same prompts, rubrics and response counts: a difference over other data would be a wrong number."""
    if not before or [row["id"] for row in before] != [row["id"] for row in after]:
        raise ValueError(f"the two files hold different prompts ({len(before)} and {len(after)} rows): compare "
                         "evaluations of the same --data, --split and --limit")
    for row_before, row_after in zip(before, after):
        if row_before["rubrics"] != row_after["rubrics"]:
            raise ValueError(f"prompt {row_before['id']!r} has other rubrics in the two files")
    held = [[(name, response["decoding"]) for response in rows[0]["responses"] for name in response
             if name not in ("decoding", "text")] for rows in (before, after)]
    report = {}
    for judge, decoding in sorted(set(held[0]) & set(held[1]), key=held[0].index):     # in the first file's order
        counts_before = item_passes(before, judge, decoding)
        counts_after = item_passes(after, judge, decoding)
        if not torch.equal(counts_before[:, 1::2], counts_after[:, 1::2]):
            raise ValueError(f"the two files hold different numbers of {decoding} responses for some prompts")
        cell = {}
        for level, column in (("instruction_accuracy", 0), ("rubric_accuracy", 2)):
            total = counts_after[:, column + 1]
            cell[level], cell[level + "_ci95"] = difference_ci95(counts_after[:, column], counts_before[:, column],
                                                                 total)
            for side, counts in (("before", counts_before), ("after", counts_after)):
                cell[f"{side}_{level}"], cell[f"{side}_{level}_ci95"] = ratio_ci95(counts[:, column], total)
        report.setdefault(judge, {})[decoding] = cell
    if not report:
        raise ValueError("the two files share no judge and decoding")
    return report


# ----------------------------------------------------------------------------- command line
def arg(default, help: str):
    return field(default=default, metadata={"help": help})


class HelpFormatter(ArgumentDefaultsHelpFormatter):
    """--help for train.py and eval.py: a default is shown only when there is one, and --no_X says what it does
    (HfArgumentParser would repeat --X's text for it)."""

    def _get_help_string(self, action):
        if action.option_strings and action.option_strings[0] == f"--no_{action.dest}":
            return f"the same as --{action.dest} False"
        if action.default in ("", []):
            return action.help
        return super()._get_help_string(action)


@dataclass
class EvalArgs:
    policy: str = arg("toy", "toy | smollm2 | a save_pretrained dir or hub id")
    checkpoint: str = arg("", "a train.py ckpt.pt: evaluated on its own data and judge")
    responses: str = arg("", "score this JSONL of {'id' or 'prompt', 'response'} rows")
    data: str = arg("", "rubric_world | ifeval | ifbench | a rubric JSONL (when not given: the checkpoint's data, "
                        "else rubric_world)")
    data_file: str = arg("", "a benchmark's prompts from this file, not the packaged copy (its own format)")
    split: str = arg("test", "test | val | train | test_unseen_combos (Rubric World) | all (a whole benchmark)")
    judge: str = arg("", f"{' | '.join(registry.JUDGES)} (default: the data's own)")
    judge_model: str = arg("", "causal LM of an llm / hybrid judge")
    samples: int = arg(4, "sampled responses per prompt (0: greedy only)")
    limit: int = arg(0, "use the first n prompts of the split (0 = all)")
    json: str = arg("", "write every report to this JSON file")
    items: str = arg("", "write each prompt's responses and verdicts to this JSONL")
    seed: int = arg(0, "sampling seed")
    temperature: float = arg(1.0, "sampling temperature")
    top_p: float = arg(1.0, "nucleus sampling")
    top_k: int = arg(0, "top-k sampling (0 = off)")
    max_new_tokens: int = arg(0, "response length cap (0: the data's own, Rubric World's 31, else 256)")
    max_batch_tokens: int = arg(16384, "sequence positions per generation chunk")
    device: str = arg("auto", "auto (cuda > mps > cpu) | cpu | cuda | mps")
    dtype: str = arg("auto", "auto | float32 | bfloat16")
    compare: list[str] = field(default_factory=list, metadata={
        "metavar": "ITEMS",
        "help": "BEFORE AFTER: two --items files of the same prompts; print after − before, paired by prompt, with "
                "95%% intervals (nothing is generated or re-scored; --limit n: their first n prompts)"})


def resolve(args: EvalArgs, device: str) -> tuple[list[dict], dict, dict]:
    """(prompts, {judge name: judge}, what is evaluated); a checkpoint brings its own data and judge, and may also be
    scored on the benchmarks its training data was kept apart from (registry.HELD_OUT_BENCHMARKS)."""
    config = read_checkpoint(args.checkpoint)["config"] if args.checkpoint else {}
    data = args.data or config.get("data", "rubric_world")
    benchmarks = registry.HELD_OUT_BENCHMARKS.get(config.get("data"), ())     # kept apart from its training data
    own_data = bool(config) and data == config["data"]
    if config and not own_data and data not in benchmarks:
        raise SystemExit(f"{args.checkpoint} was trained on --data {config['data']}; it is evaluated on that data "
                         f"(its held-out split){''.join(' or on ' + b for b in benchmarks)}, not on {data}")
    if own_data and args.split in ("train", "all"):
        raise SystemExit(f"--split {args.split} would score {args.checkpoint} on prompts it trained on")
    kind = args.judge or (config.get("judge") if own_data else "") or registry.DATA_JUDGES.get(data.split(":")[0], "")
    judge_model = args.judge_model or config.get("judge_model", "")
    judge_llm = load_policy(judge_model, device, args.dtype) if kind in registry.LLM_JUDGES and judge_model else None
    prompts, judges = registry.evaluation_task(data, args.split, kind, judge_llm, args.data_file)
    source = {"data": data, "split": args.split, "judge": kind, "checkpoint": args.checkpoint or None,
              "policy": config.get("policy", args.policy), "responses_file": args.responses or None}
    return prompts[:args.limit or None], judges, source


def print_table(result: dict, judges: list[str]) -> None:
    print(f"{'judge / decoding':>18} | {'instruction acc [95% CI]':>26} | {'rubric acc [95% CI]':>26} | words | "
          "responses | checker errors (scored NO)")
    for name, mode, r in [(name, mode, r) for name in judges for mode, r in result[name].items()]:
        cells = [f"{r[m]:.3f} [{r[m + '_ci95'][0]:.3f}, {r[m + '_ci95'][1]:.3f}]" for m in ("instruction_accuracy",
                                                                                          "rubric_accuracy")]
        print(f"{name + ' / ' + mode:>18} | {cells[0]:>26} | {cells[1]:>26} | {r['mean_words']:5.1f} | "
              f"{r['n_responses']:9d} | {sum(r['checker_errors'].values())} {r['checker_errors'] or ''}")


def print_comparison(report: dict) -> None:
    def cell_text(value: float, interval: list[float], sign: str = "") -> str:
        return f"{value:{sign}.3f} [{interval[0]:{sign}.3f}, {interval[1]:{sign}.3f}]"

    print(f"{'judge / decoding':>18} | {'level':>11} | {'before [95% CI]':>21} | {'after [95% CI]':>21} | "
          f"{'after − before [95% CI]':>24}")
    for name, by_mode in report.items():
        for mode, cell in by_mode.items():
            for level in ("instruction", "rubric"):
                key = f"{level}_accuracy"
                sides = [cell_text(cell[f"{side}_{key}"], cell[f"{side}_{key}_ci95"]) for side in ("before", "after")]
                change = cell_text(cell[key], cell[key + "_ci95"], "+")
                print(f"{name + ' / ' + mode:>18} | {level:>11} | {sides[0]:>21} | {sides[1]:>21} | {change:>24}")


def compare_files(args: "EvalArgs") -> dict:
    """--compare BEFORE AFTER: the paired differences of two --items files, printed and written to --json."""
    if len(args.compare) != 2:
        raise SystemExit(f"--compare takes two --items files, BEFORE AFTER; got {len(args.compare)}")
    if args.checkpoint or args.responses:
        raise SystemExit("--compare reads two --items files; it does not take --checkpoint or --responses")
    try:
        report = compare_items(*(read_jsonl(path)[:args.limit or None] for path in args.compare))
    except (OSError, ValueError) as error:
        raise SystemExit(f"cannot compare {' and '.join(args.compare)}: {error}") from error
    except (KeyError, TypeError, IndexError) as error:
        raise SystemExit(f"cannot compare {' and '.join(args.compare)}: not eval.py --items files "
                         f"({type(error).__name__}: {error})") from error
    result = {"before": args.compare[0], "after": args.compare[1], "limit": args.limit, **report}
    print(f"{args.compare[1]} − {args.compare[0]}, paired by prompt{f', first {args.limit}' if args.limit else ''}")
    print_comparison(report)
    if args.json:
        write_json(args.json, result)
        print(f"wrote {args.json}")
    return result


def main(argv: list[str]) -> dict:
    try:
        (args,) = HfArgumentParser(EvalArgs, formatter_class=HelpFormatter).parse_args_into_dataclasses(args=argv)
    except ValueError as error:                                                  # an unknown flag, a typo
        raise SystemExit(f"{error} (python eval.py --help lists every flag)") from error
    if args.compare:
        return compare_files(args)
    if args.checkpoint and args.responses:
        raise SystemExit("give --checkpoint (generate and score) or --responses (score), not both")
    start = time.time()
    device = str(pick_device(args.device))
    try:
        prompts, judges, source = resolve(args, device)
        if args.responses:
            prompts, groups = group_rows(prompts, read_jsonl(args.responses))
            texts = {"responses": groups}
        else:
            if args.checkpoint:
                model, tokenizer, _ = load_checkpoint_policy(args.checkpoint, device)
            else:
                model, tokenizer = load_policy(args.policy, device, args.dtype)
            max_new = args.max_new_tokens or registry.default_max_new_tokens(source["data"])
            texts = generate_texts(model, tokenizer, prompts, args.samples, max_new, args.seed, args.max_batch_tokens,
                                   progress=True, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k)
            source.update(max_new_tokens=max_new, threads=torch.get_num_threads(), device=device)
        result = {name: {mode: accuracy_report(prompts, groups, judge) for mode, groups in texts.items()}
                  for name, judge in judges.items()}
    except (OSError, ValueError) as error:
        raise SystemExit(f"cannot evaluate: {error}") from error
    first = result[next(iter(judges))]                                            # the headline: sampled if any
    headline = first.get("sampled", next(iter(first.values())))
    result = {"n_prompts": len(prompts), **{k: headline[k] for k in ("instruction_accuracy", "rubric_accuracy")},
              **source, "wall_seconds": round(time.time() - start, 1), **result}
    print(f"{source['checkpoint'] or source['responses_file'] or source['policy']} on {source['data']} "
          f"({source['split']}, {len(prompts)} prompts), {result['wall_seconds']} s")
    print_table(result, list(judges))
    if args.json:
        write_json(args.json, result)
        print(f"wrote {args.json}")
    if args.items:
        write_jsonl(args.items, item_rows(prompts, texts, judges))
        print(f"wrote {args.items}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
