"""
experiments/discriminator_candidates.py — which pairs and which model for a real policy's discriminator? Candidates
trained on one build's examples and measured on its held-out examples (the policy's own responses to prompts never
trained on) beside uniform and random relevance, and a learning curve: held-out F1 against the number of examples.

Reads the labelled pairs `python -m relevance.build --policy P --data D` saved beside its model (<model>-pairs/):
examples.jsonl (the policy's own responses and, for IFEval-style training prompts, the reference answers
(relevance/reference_answers.py: answers the policy did not write), labelled by checker search) and
held_out_examples.jsonl; what each source cost is in its labels.json.

Candidates (--variants): the pairs each trains on, and what it changes in the build's recipe (relevance/build.py)
  policy_pca            policy pairs; the recipe's encoder (word embeddings from a PCA of the policy's)
  random                policy pairs; word embeddings at random
  small                 policy pairs; half the width (hidden 64)
  reference             policy + reference pairs
  word_match            policy pairs; the encoder also reads which response tokens spell a word of the rubric's text
                        (discriminator.word_match_marks)
  word_match+reference  both
  zero_unidentifiable   both, and the side of a pair without the edit trained to 0 (relevance/build.training_examples)
  wide                  word_match+reference, twice the width (hidden 256, feed-forward 512)
  deep                  word_match+reference, twice the depth (4 layers)
  policy_layers         both pairs; the policy's own first 2 layers as a causal classifier, embeddings frozen
                        (relevance/build.policy_layers_classifier; no word-match input), lr 3e-4, 1,000 steps
Each is the build's recipe (relevance/build.REAL_RECIPE) with the settings above pinned (a 2-layer, 128-wide
bidirectional encoder, word embeddings from a PCA, no word-match input, diff labels on both sides, 2,000 steps at lr
1e-3) and then its own changes; policy_layers is the build's recipe.
Learning curve (--curve NAME --fractions ...): NAME trained on seeded subsets of its examples, same steps; its point
on all examples is NAME's own run or, when the build trained NAME's recipe on all the pairs, the build's report.
Compute (--steps N): the --variants trained N steps instead of the recipe's, stored as "<name>, N steps".
Fit (--fit N): the build's own model on N of the examples it was trained on (seeded): a model that scores there
what it scores held out did not fit its pairs; one far better there fitted them and does not carry over.
Noise (--seed N): the --variants trained from another initialisation and batch order, stored as "<name>, seed N":
how far two runs of one recipe differ is the yardstick for a difference between candidates.

Run:  python experiments/discriminator_candidates.py --policy smollm2 --data ifeval_train \
          --variants zero_unidentifiable,word_match+reference,policy_pca,word_match,reference \
          --json results/smollm2_discriminator_candidates.json
      python experiments/discriminator_candidates.py --variants "" --curve word_match+reference \
          --fractions 0.125,0.25,0.5 --json results/smollm2_discriminator_candidates.json \
          --plot results/smollm2_discriminator_curve.png
      python experiments/discriminator_candidates.py --variants word_match+reference --steps 4000 \
          --json results/smollm2_discriminator_candidates.json
      python experiments/discriminator_candidates.py --variants word_match+reference --seed 1 \
          --json results/smollm2_discriminator_candidates.json
      python experiments/discriminator_candidates.py --variants "" --fit 752 \
          --json results/smollm2_discriminator_candidates.json
"""

import argparse
import json
import os
import random
import sys
import time
from collections import Counter

import torch
from tqdm import tqdm

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from discriminator import load_discriminator, token_metrics, train_discriminator  # noqa: E402
from policies import loading  # noqa: E402
from relevance import build, report  # noqa: E402
from runs.files import read_jsonl, write_json  # noqa: E402

# What every variant changes from: the encoder the candidates started with, pinned so that a new recipe default
# changes no variant.
PINNED = {"init": "policy_pca", "backbone": "bidirectional", "hidden": 128, "layers": 2, "heads": 4,
          "intermediate": 256, "word_match": False, "unidentifiable": "diff", "steps": 2000, "lr": 1e-3}
VARIANTS = {  # name -> (changes to PINNED, pair sources)
    "policy_pca": ({}, ("policy",)),
    "random": ({"init": "random"}, ("policy",)),
    "small": ({"hidden": 64, "intermediate": 128}, ("policy",)),
    "reference": ({}, ("policy", "reference")),
    "word_match": ({"word_match": True}, ("policy",)),
    "word_match+reference": ({"word_match": True}, ("policy", "reference")),
    "zero_unidentifiable": ({"word_match": True, "unidentifiable": "zero"}, ("policy", "reference")),
    "wide": ({"word_match": True, "hidden": 256, "intermediate": 512}, ("policy", "reference")),
    "deep": ({"word_match": True, "layers": 4}, ("policy", "reference")),
    "policy_layers": ({"init": "policy_layers", "backbone": "causal", "layers": 2, "hidden": None, "heads": None,
                       "intermediate": None, "lr": 3e-4, "steps": 1000}, ("policy", "reference")),
}
MIN_TYPE_EXAMPLES = 20                   # a rubric type is compared with uniform relevance from this many examples


def below_uniform(held_out_metrics: dict) -> list[str]:
    """Rubric types with at least MIN_TYPE_EXAMPLES held-out examples whose F1 or top-1 is below uniform's."""
    worse = []
    for group, providers in held_out_metrics.items():
        if not group.startswith("type/") or providers["discriminator"]["examples"] < MIN_TYPE_EXAMPLES:
            continue
        mine = providers["discriminator"]
        uniform = providers["uniform"]
        top1_worse = mine["top1_violated"] < uniform["top1_violated"]          # nan (no violated example) is False
        if mine["f1"] < uniform["f1"] or top1_worse:
            worse.append(group[len("type/"):])
    return worse


def identifiable_ceiling(held_out: list[dict]) -> dict:
    """token_metrics on the held-out token-scope examples of a model that is exact where one response identifies
    the label and says 0 elsewhere (METHOD.md §4 trap 2): what no model can beat by much on these labels."""
    tokens = [e for e in held_out if e["scope"] == "tokens"]
    probs = [torch.tensor(e["labels"]) if e["identifiable"] else torch.zeros(len(e["labels"])) for e in tokens]
    return token_metrics(probs, [e["labels"] for e in tokens], [e["violated"] for e in tokens])


def by_training_labels(held_out_metrics: dict, training: list[dict]) -> dict:
    """The discriminator's token-scope precision / recall / F1 pooled over the rubric types whose training examples
    are mostly token labels ("mostly_token_types": their rubric is usually about a few tokens) and over the rest
    ("mostly_whole_types": usually about the whole response), from a report's per-(type, scope) figures. Counts are
    recovered from precision, recall and the relevant share; a group with no true positive hides how many tokens
    it predicted, so a pool holding one is None rather than a wrong figure."""
    scopes = Counter((e["type"], e["scope"]) for e in training)
    counts = {"mostly_token_types": [0, 0, 0, 0], "mostly_whole_types": [0, 0, 0, 0]}   # examples, predicted, hits,
    unknown = set()                                                                        # labels
    for group, providers in held_out_metrics.items():
        if not (group.startswith("type_scope/") and group.endswith("/tokens")):
            continue
        rubric_type = group[len("type_scope/"):-len("/tokens")]
        mostly_whole = scopes[rubric_type, "whole"] > scopes[rubric_type, "tokens"]
        pool = "mostly_whole_types" if mostly_whole else "mostly_token_types"
        metrics = providers["discriminator"]
        labels = round(metrics["tokens"] * metrics["relevant_share"])
        hits = round(metrics["recall"] * labels)
        if hits == 0:
            unknown.add(pool)
            continue
        for i, count in enumerate((metrics["examples"], round(hits / metrics["precision"]), hits, labels)):
            counts[pool][i] += count
    pooled = {}
    for pool, (examples, predicted, hits, labels) in counts.items():
        if pool in unknown or not labels:
            pooled[pool] = None
            continue
        precision = hits / max(predicted, 1)
        recall = hits / labels
        pooled[pool] = {"examples": examples, "precision": precision, "recall": recall,
                        "f1": 2 * precision * recall / (precision + recall) if hits else 0.0}
    return pooled


def pool_every_run(results: dict, examples: list[dict]) -> None:
    """Add by_training_labels (pooled over the build's examples) to every measured run in results."""
    runs = [*results["variants"].values(), *(point for curve in results["curve"].values() for point in curve.values()),
            results.get("build"), results.get("build_training_fit")]
    for run in runs:
        if run:
            run["by_training_labels"] = by_training_labels(run["report"], examples)


def train_and_measure(name: str, policy_model, tokenizer, recipe: dict, examples: list[dict],
                      held_out: list[dict]) -> dict:
    model = build.encoder_for(policy_model, tokenizer, recipe)
    start = time.time()
    with tqdm(total=recipe["steps"], desc=name, mininterval=5.0) as bar:
        train_discriminator(model, tokenizer, build.training_examples(examples, recipe), recipe["steps"],
                            recipe["batch_size"], recipe["lr"], seed=recipe["seed"],
                            progress=lambda step, loss: bar.update(1))
    seconds = time.time() - start
    metrics = report.held_out_report(model, tokenizer, held_out)
    return {"examples": len(examples), "train_seconds": round(seconds, 1), "threads": torch.get_num_threads(),
            "below_uniform": below_uniform(metrics), "report": metrics}


def line(name: str, result: dict) -> str:
    tokens = result["report"]["scope/tokens"]
    every = result["report"]["all"]
    return (f"{name:>22} {result['examples']:6d} examples | token scope F1 {tokens['discriminator']['f1']:.3f} "
            f"AUROC {tokens['discriminator']['auroc']:.3f} top-1 {tokens['discriminator']['top1_violated']:.3f} "
            f"(uniform {tokens['uniform']['f1']:.3f} / {tokens['uniform']['top1_violated']:.3f}) | all F1 "
            f"{every['discriminator']['f1']:.3f} AUROC {every['discriminator']['auroc']:.3f} | below uniform on "
            f"{len(result['below_uniform'])} types | {result['train_seconds']:.0f} s")


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--policy", default="smollm2")
    parser.add_argument("--data", default="ifeval_train")
    parser.add_argument("--variants", default="policy_pca,reference,word_match,word_match+reference",
                        help=f"comma-separated, of {', '.join(VARIANTS)} (empty: only the curve)")
    parser.add_argument("--curve", default="", help="a variant to train on fractions of its examples")
    parser.add_argument("--fractions", default="0.125,0.25,0.5", help="the learning curve's fractions of the examples")
    parser.add_argument("--steps", type=int, help="train the --variants this many steps instead of the recipe's "
                        "(stored as '<variant>, <steps> steps': the compute axis)")
    parser.add_argument("--seed", type=int, help="train the --variants from this seed instead of the recipe's "
                        "(stored as '<variant>, seed <seed>': run-to-run noise)")
    parser.add_argument("--fit", type=int, default=0, help="measure the build's own model on this many of its "
                        "training examples (seeded)")
    parser.add_argument("--json", default="", help="write the results here (a run adds to this file's candidates)")
    parser.add_argument("--plot", default="", help="PNG of the learning curve (with --curve)")
    args = parser.parse_args(argv)
    if args.plot and not args.curve:
        raise SystemExit("--plot draws the learning curve: name its variant with --curve")
    if args.steps is not None and (args.steps < 1 or args.curve):
        raise SystemExit("--steps takes a positive number and applies to --variants only (the learning curve "
                         "is over data, at the recipe's steps)")
    if args.seed is not None and (args.seed < 0 or args.curve):
        raise SystemExit("--seed takes a number >= 0 and applies to --variants only (the learning curve is at the "
                         "recipe's seed)")
    names = [n for n in args.variants.split(",") if n]
    wanted = names + ([args.curve] if args.curve else [])
    unknown = [n for n in wanted if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    try:
        fractions = [float(f) for f in args.fractions.split(",")]
    except ValueError as error:
        raise SystemExit(f"--fractions takes comma-separated numbers, got {args.fractions!r}") from error
    if not all(0 < f <= 1 for f in fractions):
        raise SystemExit(f"--fractions must lie in (0, 1], got {args.fractions!r}")
    if args.fit < 0:
        raise SystemExit(f"--fit takes a number of training examples, got {args.fit}")
    if not wanted and not args.fit:
        raise SystemExit("nothing to do: name --variants, a --curve or --fit")
    policy_model, tokenizer = loading.load_policy(args.policy, "cpu", "float32")
    pairs = build.pairs_dir(build.real_cache_dir(args.policy, args.data))
    try:
        examples = read_jsonl(os.path.join(pairs, "examples.jsonl"))
        held_out = read_jsonl(os.path.join(pairs, "held_out_examples.jsonl"))
        with open(os.path.join(pairs, build.LABELS_FILE)) as f:
            labelled = json.load(f)
    except OSError as error:
        raise SystemExit(f"no build to compare against: run python -m relevance.build --policy {args.policy} "
                         f"--data {args.data} first ({error})") from error
    sources = {"policy": [e for e in examples if e.get("source") != "reference"],
               "reference": [e for e in examples if e.get("source") == "reference"]}
    if any("reference" in VARIANTS[n][1] for n in wanted) and not sources["reference"]:
        raise SystemExit(f"the build of {args.data} holds no reference pairs (its prompts have no packaged answers, "
                         "or its recipe has reference_answers off): choose variants without reference")
    cost = {k: labelled[k] for k in ("sample_s", "label_s", "reference_label_s", "label_workers") if k in labelled}
    results = {"policy": args.policy, "data": args.data, "labels_key": labelled["labels_key"],
               "held_out_examples": len(held_out),
               "examples": {name: len(rows) for name, rows in sources.items()}, "labelling": cost,
               "identifiable_ceiling": identifiable_ceiling(held_out), "variants": {}, "curve": {}}
    model_meta = build.read_meta(build.real_cache_dir(args.policy, args.data))
    if model_meta.get("labels_key") == labelled["labels_key"]:                 # the preset's model, on these pairs
        results["build"] = {"recipe": model_meta["recipe"], "examples": model_meta["examples"],
                            "train_seconds": model_meta["train_s"], "threads": model_meta["threads"],
                            "below_uniform": below_uniform(model_meta["report"]), "report": model_meta["report"]}
    ceiling = results["identifiable_ceiling"]
    print(f"held-out token-scope labels: {ceiling['examples']} examples; exact where one response identifies the "
          f"label, 0 elsewhere: F1 {ceiling['f1']:.3f} AUROC {ceiling['auroc']:.3f}")
    if args.json and os.path.exists(args.json):           # a later run adds its variants and curve to the file's
        with open(args.json) as f:
            before = json.load(f)
        if before.get("labels_key") != labelled["labels_key"]:
            raise SystemExit(f"{args.json} holds candidates measured on other pairs (another policy, data or build): "
                             "use a new --json")
        results["variants"] = before.get("variants", {})
        results["curve"] = before.get("curve", {})
        earlier_fit = before.get("build_training_fit")
        if earlier_fit and earlier_fit["recipe"] == results.get("build", {}).get("recipe"):   # the same model's
            results["build_training_fit"] = earlier_fit
    if args.fit:
        if "build" not in results:
            raise SystemExit("--fit measures the build's own model, and it was not trained on these pairs: run "
                             f"python -m relevance.build --policy {args.policy} --data {args.data}")
        disc, disc_tokenizer = load_discriminator(build.real_cache_dir(args.policy, args.data), tokenizer)
        trained_on = build.training_examples(examples, results["build"]["recipe"])
        sample = random.Random(0).sample(trained_on, min(args.fit, len(trained_on)))
        results["build_training_fit"] = {"recipe": results["build"]["recipe"], "examples": len(sample),
                                         "report": report.held_out_report(disc, disc_tokenizer, sample)}
        seen = results["build_training_fit"]["report"]
        unseen = results["build"]["report"]
        figures = [f"{seen[group]['discriminator'][metric]:.3f} ({unseen[group]['discriminator'][metric]:.3f})"
                   for group, metric in (("scope/tokens", "f1"), ("scope/tokens", "auroc"), ("all", "f1"))]
        print(f"the build's model on {len(sample)} of its training examples (held out): token-scope F1 {figures[0]} "
              f"AUROC {figures[1]} | all labels F1 {figures[2]}")
        if args.json:
            pool_every_run(results, examples)
            write_json(args.json, results)
    for name in names:
        changes, pair_sources = VARIANTS[name]
        chosen = [e for source in pair_sources for e in sources[source]]
        recipe = {**build.REAL_RECIPE, **PINNED, **changes}
        label = name
        if args.steps:
            recipe["steps"] = args.steps
            label += f", {args.steps} steps"
        if args.seed is not None:
            recipe["seed"] = args.seed
            label += f", seed {args.seed}"
        results["variants"][label] = {"recipe": recipe, "sources": pair_sources,
                                      **train_and_measure(label, policy_model, tokenizer, recipe, chosen, held_out)}
        print(line(label, results["variants"][label]))
        if args.json:
            pool_every_run(results, examples)
            write_json(args.json, results)                     # after every run: a stopped run keeps what it did
    if args.curve:
        changes, pair_sources = VARIANTS[args.curve]
        chosen = [e for source in pair_sources for e in sources[source]]
        curve = results["curve"].setdefault(args.curve, {})
        for fraction in fractions:
            subset = random.Random(0).sample(chosen, max(1, round(fraction * len(chosen))))
            curve[str(fraction)] = train_and_measure(f"{args.curve} x{fraction}", policy_model, tokenizer,
                                                     {**build.REAL_RECIPE, **PINNED, **changes}, subset, held_out)
            print(line(f"{args.curve} x{fraction}", curve[str(fraction)]))
            if args.json:
                pool_every_run(results, examples)
            write_json(args.json, results)
    if args.plot:
        plot_curve(results, args.curve, args.plot)
        print(f"learning curve -> {args.plot}")
    pool_every_run(results, examples)
    print("token-scope labels pooled over the types whose training labels are mostly tokens (F1 / precision / "
          "recall), and over the rest:")
    for name, run in [*results["variants"].items(), *([("build", results["build"])] if "build" in results else [])]:
        print(f"{name:>32} " + " | ".join(f"{pool} " + (f"{p['f1']:.3f} / {p['precision']:.3f} / {p['recall']:.3f}"
                                                          if p else "not recoverable")
                                          for pool, p in run["by_training_labels"].items()))
    return results


def on_all_examples(results: dict, name: str) -> dict | None:
    """The run of variant `name` on all its examples: its own, else the build's when the build trained the same
    recipe on the same (all) pairs, else None."""
    if name in results["variants"]:
        return results["variants"][name]
    changes, pair_sources = VARIANTS[name]
    built = results.get("build")
    if built and built["recipe"] == {**build.REAL_RECIPE, **PINNED, **changes} and set(pair_sources) == set(
            results["examples"]):
        return built
    return None


def plot_curve(results: dict, name: str, path: str) -> None:
    """Held-out token-scope F1 and AUROC against the training examples: the curve's subsets and, when measured,
    the variant on all its examples; uniform relevance's F1 as a line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    runs = list(results["curve"][name].values()) + [run for run in [on_all_examples(results, name)] if run]
    runs.sort(key=lambda run: run["examples"])
    tokens = [run["report"]["scope/tokens"] for run in runs]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([run["examples"] for run in runs], [t["discriminator"]["f1"] for t in tokens], "o-", label="F1 at 0.5")
    ax.plot([run["examples"] for run in runs], [t["discriminator"]["auroc"] for t in tokens], "s-", label="AUROC")
    ax.axhline(tokens[0]["uniform"]["f1"], color="grey", linestyle="--", label="uniform relevance F1")
    ax.set_xscale("log")
    ax.set(xlabel="training examples", ylim=(0, 1),
           title=f"{name}: held-out token-scope labels ({tokens[0]['discriminator']['examples']} examples)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path + ".tmp", format="png", dpi=120)
    plt.close(fig)
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    main(sys.argv[1:])
