"""
policies/ — the policy π_θ: loading it, sampling from it, scoring its tokens.

  loading.py   the toy, SmolLM2 (from the GGUF a pip package ships), any save_pretrained directory or hub id;
               dtype, the chat end-of-turn token, a train.py checkpoint's policy
  toy.py       the toy policy: a 2-layer Llama built from a config and warm-started on Rubric World's teacher
  rollout.py   encode prompts, sample G responses under a memory budget, per-token tempered log-probs

Layer 4 of the reading guide (README): imports the concept files, runs/ and tasks/ only.
"""
