"""
relevance/ — where the relevance weights w come from: making the discriminator's data, building it, measuring it.

  rubric_world_labels.py  Rubric World's minimal pairs as token labels, the oracle relevance, the greedy baseline
  checker_edits.py        minimal edits of a real policy's responses found by checker search (IFEval's checkers)
  llm_labels.py           labels written by an LLM: the greedy quote baseline's parser, your own span files
  build.py                build once and cache a discriminator for a policy and a dataset (toy or real); its CLI
  report.py               precision / recall / F1, AUROC and top-1 per rubric type and side; heat maps

Using a discriminator is discriminator.relevance (a concept file); building one is this folder's job.
Layer 5 of the reading guide (README): imports the concept files, runs/, tasks/ and policies/.
"""
