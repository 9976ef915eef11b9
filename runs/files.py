"""
runs/files.py — JSON and JSONL files, read with errors that name the line, written atomically; the cache folder.

Every result file of the project is written to a temporary file next to its path and renamed into place, so a
crash (or Ctrl-C) mid-write never leaves half a file behind: the old version stays until the new one is whole.
"""

import json
import math
import os

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cache_path(*parts: str) -> str:
    """A path under the cache folder: cache/ at the repository root, or $RTT_CACHE when it is set. Built models
    (the toy policy, SmolLM2's conversion, discriminators) and offline data (NLTK's Punkt tables) live there."""
    return os.path.join(os.environ.get("RTT_CACHE") or os.path.join(REPO_ROOT, "cache"), *parts)


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


def write_text(path: str, text: str) -> None:
    """Write a text file atomically: a temporary file next to `path`, then os.replace."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def json_safe(value):
    """NaN and infinities (an undefined metric, e.g. AUROC with one class) become None, so the JSON is standard."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: str, obj) -> None:
    """Write standard JSON atomically; NaN becomes null (json_safe)."""
    write_text(path, json.dumps(json_safe(obj), indent=1, allow_nan=False) + "\n")


def write_jsonl(path: str, rows: list[dict]) -> None:
    """Write JSON lines atomically, one object per line."""
    write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


def keep_lines(path: str, keep) -> None:
    """Rewrite a JSONL file keeping the rows for which keep(row) is true (atomically; no file: nothing to do)."""
    if os.path.exists(path):
        write_jsonl(path, [row for row in read_jsonl(path) if keep(row)])
