"""
tasks/ — the prompts with rubrics a run trains and evaluates on, and the judges that score them.

  rubric_world.py        the toy task: prompts, nine rule-checked rubric types, splits, the word-level tokenizer
  rubric_world_edits.py  its minimal-modification editor and the imperfect teacher the toy policy learns from
  ifeval.py, ifbench.py  the paper's benchmarks: prompts from a pip package, their libraries' checkers, offline
  registry.py            datasets and judges by name (--data, --judge), your own rubric JSONL, prompt batches

Layer 3 of the reading guide (README): imports the concept files and runs/ only.
"""
