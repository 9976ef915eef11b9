"""
experiments/discriminator_backbones.py — which backbone for a real policy's discriminator? The same minimal-pair
examples and steps, different encoders; held-out token metrics and training time for each.

Reads the examples a `python -m relevance.build --policy P --data D` build saved beside its model
(examples.jsonl, held_out_examples.jsonl: the policy's own responses, labelled by checker search), and trains:
  policy_pca  the recipe's encoder, word embeddings initialised from a PCA of the policy's input embeddings
  random      the same encoder, embeddings initialised at random
  small       policy_pca at half the width (hidden 64)
Prints F1 at 0.5, AUROC and top-1 of violated rubrics on the held-out examples (all, and those whose labels their own
response can identify), beside uniform relevance, with the training time; --json writes it all.

Run:  python experiments/discriminator_backbones.py --policy smollm2 --data ifeval --json results/smollm2_backbones.json
"""

import argparse
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from discriminator import train_discriminator  # noqa: E402
from policies import loading  # noqa: E402
from relevance import build, report  # noqa: E402
from runs.files import read_jsonl, write_json  # noqa: E402

VARIANTS = {"policy_pca": {}, "random": {"init": "random"}, "small": {"hidden": 64, "intermediate": 128}}


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--policy", default="smollm2")
    parser.add_argument("--data", default="ifeval")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    folder = build.real_cache_dir(args.policy, args.data)
    examples = read_jsonl(os.path.join(folder, "examples.jsonl"))
    held_out = read_jsonl(os.path.join(folder, "held_out_examples.jsonl"))
    policy, tokenizer = loading.load_policy(args.policy, "cpu", "float32")
    results = {}
    for name in args.variants.split(","):
        recipe = {**build.REAL_RECIPE, **VARIANTS[name]}
        model = build.encoder_for(policy, tokenizer, recipe)
        start = time.time()
        train_discriminator(model, tokenizer, examples, recipe["steps"], recipe["batch_size"], recipe["lr"],
                            seed=recipe["seed"])
        seconds = time.time() - start
        held_out_metrics = report.held_out_report(model, tokenizer, held_out)
        results[name] = {"recipe": recipe, "train_seconds": round(seconds, 1), "threads": torch.get_num_threads(),
                         **{group: held_out_metrics[group] for group in ("all", "identifiable", "scope/tokens")
                            if group in held_out_metrics}}
        for group in ("all", "identifiable"):
            m = held_out_metrics[group]["discriminator"]
            u = held_out_metrics[group]["uniform"]
            print(f"{name:>11} {group:>13}: F1 {m['f1']:.3f} AUROC {m['auroc']:.3f} top-1 {m['top1_violated']:.3f}"
                  f" (uniform F1 {u['f1']:.3f}) | trained in {seconds:.0f} s")
    if args.json:
        write_json(args.json, {"policy": args.policy, "data": args.data, "examples": len(examples),
                               "held_out_examples": len(held_out), "variants": results})
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
