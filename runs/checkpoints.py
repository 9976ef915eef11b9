"""
runs/checkpoints.py — train.py's ckpt.pt, in one place: written atomically, read without executing code, resumed
exactly where a run stopped.

A checkpoint is one dict: the policy's and optimiser's state, the schedule, the step, the config as a plain dict, the
run's own state (the collapse guard's windows) and every random generator's state, so a resumed run draws the same
data and samples as an uninterrupted one. Reading uses torch.load(weights_only=True): tensors, numbers, strings,
lists and dicts only, never code; a file with anything else is refused with the reason, never with advice to
switch that protection off.
"""

import os
import pickle
import random

import torch

from runs.files import keep_lines, write_text


def read_checkpoint(path: str) -> dict:
    """A train.py checkpoint as a dict, read WITHOUT executing code (torch.load weights_only: tensors, numbers,
    strings, lists, dicts only); ValueError naming the problem for a missing, foreign or corrupt file."""
    if not os.path.isfile(path):
        raise ValueError(f"cannot read checkpoint {path!r}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:          # objects that would run code: refused, whatever torch advises
        raise ValueError(f"cannot read checkpoint {path!r}: it holds something other than tensors, numbers, strings, "
                         "lists and dicts (not a train.py checkpoint); "
                         "refused, since loading it could run code") from error
    except Exception as error:                       # a truncated file, not a checkpoint at all
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ValueError(f"cannot read checkpoint {path!r}: not a whole file written by torch.save "
                         f"({type(error).__name__}: {first_line})") from error
    has_fields = isinstance(state, dict) and {"policy", "step", "config"} <= set(state)
    if not has_fields or not isinstance(state["policy"], dict) or not isinstance(state["config"], dict):
        raise ValueError(f"{path!r} is not a train.py checkpoint (needs 'policy', 'step' and 'config')")
    return state


def save_checkpoint(path: str, model, optimizer, scheduler, step: int, config: dict, run_state: dict,
                    generators: dict) -> None:
    """Everything needed to resume exactly, in one file, written atomically (a crash mid-write keeps the previous
    one): weights, optimiser, schedule, config, `run_state` (e.g. the collapse guard's state), and the
    state of the global random generators and of the run's own `generators` ({name: torch.Generator})."""
    state = {"policy": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "step": step, "config": config, "run_state": run_state,
             "rng": {"python": random.getstate(), "torch": torch.get_rng_state(),
                     **{name: generator.get_state() for name, generator in generators.items()}}}
    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)


def load_checkpoint(path: str, config: dict, run_defining: tuple[str, ...]) -> dict:
    """A checkpoint of THIS run (the same values of the run-defining fields), read without executing code
    (read_checkpoint); SystemExit saying why not."""
    try:
        state = read_checkpoint(path)
    except ValueError as error:
        raise SystemExit(str(error)) from error
    differing = {k: (state["config"].get(k), config[k]) for k in run_defining if state["config"].get(k) != config[k]}
    if differing:
        raise SystemExit(f"checkpoint {path!r} was made with another config (checkpoint vs now): {differing}")
    if not {"optimizer", "scheduler", "rng", "run_state"} <= set(state):
        raise SystemExit(f"{path!r} is not a resumable train.py checkpoint (missing optimizer/scheduler/rng/run_state)")
    return state


def resume(path: str, config: dict, run_defining: tuple[str, ...], model, optimizer, scheduler,
           generators: dict) -> dict:
    """Load the checkpoint's weights, optimiser, schedule and random states (into `generators` too); drop the log
    lines and samples written after it (those steps are redone). Returns {"step": where to go on, **run_state}."""
    state = load_checkpoint(path, config, run_defining)
    model.load_state_dict(state["policy"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    random.setstate(state["rng"]["python"])
    torch.set_rng_state(state["rng"]["torch"])
    for name, generator in generators.items():
        generator.set_state(state["rng"][name])
    step = state["step"]
    out_dir = config["out_dir"]
    keep_lines(os.path.join(out_dir, "metrics.jsonl"), lambda row: row["step"] < step)
    keep_lines(os.path.join(out_dir, "evals.jsonl"), lambda row: row["step"] <= step)
    samples = os.path.join(out_dir, "samples.txt")
    if os.path.exists(samples):                                                  # blocks start "===== step N ====="
        with open(samples) as f:
            blocks = f.read().split("\n===== step ")
        write_text(samples, "\n===== step ".join(blocks[:1] + [b for b in blocks[1:] if int(b.split()[0]) < step]))
    print(f"resumed from {path} at step {step}")
    return {"step": step, **state["run_state"]}
