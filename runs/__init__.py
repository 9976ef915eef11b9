"""
runs/ — the files a run reads and writes, written so that a crash never leaves half a file.

  files.py        JSON / JSONL read with errors that name the line, written atomically; the cache folder
  checkpoints.py  train.py's ckpt.pt: written atomically, read without executing code, resumed exactly
  outputs.py      out_dir, metrics.jsonl / evals.jsonl, samples.txt with token advantages, the collapse guard,
                  the summary printed at the end

Layer 2 of the reading guide (README): imports nothing of the project outside runs/.
"""
