"""Where one RTT step's time goes with SmolLM2-135M-Instruct on a CPU: a decoding step by module and by operator, and
the update (train.policy_update) by phase and by operator.

Sampling: policies.rollout.generate on B IFEval prompts, G responses each (the smollm2 preset's warpers). Forward
hooks time every module of one kind (attention: projections, rotary, cache, scaled-dot-product; MLP; RMSNorm; the
LM head; the embedding); "model glue" is the rest of the model's forward (the attention-mask construction, rotary
tables, the layer loop in Python); "sampler and loop" is what generate does outside the model (warpers, the draw,
bookkeeping). The prefill (one forward per chunk) is reported apart from the decoding steps.
Update: one policy_update (μ = 1, random advantages on the response tokens) on those responses: the backbone's
forward over prompt + response, the LM head on response tokens (run again in backward: activation checkpointing),
clip_grad_norm_, AdamW (fused, as train.py), and the rest (backward and the loss).
Operators: torch.profiler's self time, matrix products named by the layer they belong to (their weight's shape);
the profiler slows what it watches, so its shares are the figures to read, and the times by phase come from a run
without it.

Run:  OMP_NUM_THREADS=1 python benchmarks/smollm2_profile.py --json results/smollm2_profile.json
"""

import argparse
import collections
import json
import os
import sys
import time

import torch
from torch.profiler import profile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import train  # noqa: E402
from policies import loading  # noqa: E402
from policies.rollout import encode_prompts, generate  # noqa: E402
from runs.files import write_json  # noqa: E402
from tasks import ifeval  # noqa: E402


def module_kind(name: str, module, model) -> str | None:
    """The row of the breakdown a module's time goes to; None for modules that contain others we time."""
    if module is model.get_output_embeddings():
        return "LM head"
    if module is model.get_input_embeddings():
        return "embedding"
    kind = type(module).__name__
    for suffix, label in (("Attention", "attention"), ("MLP", "MLP"), ("RMSNorm", "RMSNorm")):
        if kind.endswith(suffix):
            return label
    return None


class ModuleClock:
    """Inclusive wall time per module kind, split into the prefill (input of more than one position) and decoding."""

    def __init__(self, model, root):
        self.seconds = collections.defaultdict(float)                             # (phase, kind) -> s
        self.calls = collections.Counter()                                        # phase -> model forwards
        self.phase = "decode"
        self.handles = []
        self.starts = {}
        self.watch(root, "model", self.set_phase)
        for name, module in model.named_modules():
            kind = module_kind(name, module, model)
            if kind is not None:
                self.watch(module, kind)

    def set_phase(self, kwargs):
        self.phase = "prefill" if kwargs["input_ids"].shape[1] > 1 else "decode"
        self.calls[self.phase] += 1

    def watch(self, module, kind, on_start=None):
        def before(_module, _args, kwargs):
            if on_start is not None:
                on_start(kwargs)
            self.starts[id(module)] = time.perf_counter()

        def after(_module, _args, _kwargs, _out):
            self.seconds[(self.phase, kind)] += time.perf_counter() - self.starts[id(module)]

        self.handles.append(module.register_forward_pre_hook(before, with_kwargs=True))
        self.handles.append(module.register_forward_hook(after, with_kwargs=True))

    def remove(self):
        for handle in self.handles:
            handle.remove()


def operator_table(prof, weight_names: dict, top: int = 12) -> list[dict]:
    """torch.profiler self CPU time per operator; matrix products split by the layer their weight belongs to."""
    seconds = collections.defaultdict(float)
    calls = collections.Counter()
    for event in prof.key_averages(group_by_input_shape=True):
        name = event.key
        shapes = [tuple(s) for s in event.input_shapes if s]
        if name in ("aten::mm", "aten::addmm") and shapes:
            name = f"{name} {weight_names.get(frozenset(shapes[-1]), 'other')}"
        seconds[name] += event.self_cpu_time_total / 1e6
        calls[name] += event.count
    total = sum(seconds.values())
    rows = sorted(seconds.items(), key=lambda item: -item[1])[:top]
    return [{"operator": name, "seconds": round(s, 3), "share": round(s / total, 3), "calls": calls[name]}
            for name, s in rows]


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts_per_step", type=int, default=2)
    parser.add_argument("--group_size", type=int, default=4)
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    cfg = train.parse_config(["smollm2", "--group_size", str(args.group_size), "--prompts_per_step",
                              str(args.prompts_per_step), "--max_new_tokens", str(args.max_new_tokens),
                              "--relevance", "uniform", "--device", "cpu"])
    model, tokenizer, amp = loading.load_for_training(cfg.policy, "cpu", cfg.dtype)
    layer_names = collections.defaultdict(set)                                   # weight shape -> layer names
    for name, parameter in model.named_parameters():
        if parameter.dim() == 2:
            layer_names[frozenset(parameter.shape)].add(name.split(".")[-2])
    weight_names = {shape: "/".join(sorted(names)) for shape, names in layer_names.items()}
    weight_names[frozenset(model.get_output_embeddings().weight.shape)] = "LM head (tied to the embedding)"
    prompt_ids = encode_prompts(tokenizer, ifeval.load_prompts(limit=2 * args.prompts_per_step))
    sampling = dict(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k)
    model.eval()
    generate(model, tokenizer, prompt_ids[args.prompts_per_step:], cfg.group_size, 8, **sampling,
             generator=torch.Generator().manual_seed(1))                         # warm-up on other prompts
    prompt_ids = prompt_ids[:args.prompts_per_step]
    clock = ModuleClock(model, model)
    tic = time.perf_counter()
    response_ids, token_mask = generate(model, tokenizer, prompt_ids, cfg.group_size, cfg.max_new_tokens, **sampling,
                                        generator=torch.Generator().manual_seed(0))
    generate_seconds = time.perf_counter() - tic
    clock.remove()
    steps = clock.calls["decode"]
    model_seconds = {phase: sum(s for (p, _), s in clock.seconds.items() if p == phase and _ == "model")
                     for phase in ("prefill", "decode")}
    decode = {kind: s / steps for (phase, kind), s in clock.seconds.items() if phase == "decode" and kind != "model"}
    decode["model glue"] = model_seconds["decode"] / steps - sum(decode.values())
    decode["sampler and loop"] = (generate_seconds - sum(model_seconds.values())) / (steps + 1)
    with profile(record_shapes=True) as prof:
        generate(model, tokenizer, prompt_ids, cfg.group_size, cfg.max_new_tokens, **sampling,
                 generator=torch.Generator().manual_seed(0))
    decode_ops = operator_table(prof, weight_names)

    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0, fused=True)   # as train.py
    advantages = torch.randn(token_mask.shape, generator=torch.Generator().manual_seed(0)) * token_mask
    update_phases = collections.defaultdict(float)
    real_step = optimizer.step
    real_clip = torch.nn.utils.clip_grad_norm_

    def timed(label, function):
        def run(*a, **k):
            tic_inner = time.perf_counter()
            out = function(*a, **k)
            update_phases[label] += time.perf_counter() - tic_inner
            return out
        return run

    optimizer.step = timed("AdamW step (fused)", real_step)
    torch.nn.utils.clip_grad_norm_ = timed("clip_grad_norm_", real_clip)
    forward = ModuleClock(model, model.base_model)                                # response_logprobs' two parts
    try:
        train.policy_update(model, None, optimizer, tokenizer, cfg, prompt_ids, response_ids, token_mask, advantages,
                            amp)                                                 # warm-up: AdamW's state
        update_phases.clear()
        forward.seconds.clear()
        tic = time.perf_counter()
        train.policy_update(model, None, optimizer, tokenizer, cfg, prompt_ids, response_ids, token_mask, advantages,
                            amp)                                                 # timed by phase, no profiler
        update_seconds = time.perf_counter() - tic
        forward_seconds = dict(forward.seconds)
        phases = dict(update_phases)
        with profile(record_shapes=True) as prof:                                 # operators' shares
            train.policy_update(model, None, optimizer, tokenizer, cfg, prompt_ids, response_ids, token_mask,
                                advantages, amp)
    finally:
        torch.nn.utils.clip_grad_norm_ = real_clip
        optimizer.step = real_step
        forward.remove()
    phases["forward: backbone"] = sum(s for (_, kind), s in forward_seconds.items() if kind == "model")
    phases["LM head (forward, again in backward)"] = sum(s for (_, kind), s in forward_seconds.items()
                                                         if kind == "LM head")
    phases["backward and loss"] = update_seconds - sum(phases.values())
    update_ops = operator_table(prof, weight_names)
    summary = {"policy": "smollm2", "B": args.prompts_per_step, "G": args.group_size,
               "max_new_tokens": args.max_new_tokens, "threads": torch.get_num_threads(),
               "decode_steps": steps, "response_tokens": int(token_mask.sum()),
               "generate_seconds": round(generate_seconds, 2),
               "prefill_seconds": round(model_seconds["prefill"], 3),
               "decode_ms_per_step": {k: round(v * 1e3, 1) for k, v in sorted(decode.items(), key=lambda kv: -kv[1])},
               "decode_operators": decode_ops,
               "update_seconds": round(update_seconds, 2),
               "update_phases": {k: round(v, 2) for k, v in sorted(phases.items(), key=lambda kv: -kv[1])},
               "update_operators": update_ops}
    print(f"generate: {generate_seconds:.2f} s = prefill {model_seconds['prefill']:.2f} s + {steps} decoding steps "
          f"({torch.get_num_threads()} thread(s), B = {args.prompts_per_step}, G = {args.group_size})")
    print(f"{'one decoding step':>28} | ms")
    for kind, ms in summary["decode_ms_per_step"].items():
        print(f"{kind:>28} | {ms:6.1f}")
    print(f"{'total':>28} | {sum(summary['decode_ms_per_step'].values()):6.1f}")
    for title, table in (("decoding operators (self time)", decode_ops),
                         ("update operators (self time)", update_ops)):
        print(f"\n{title}")
        for row in table:
            print(f"{row['operator']:>40} | {row['seconds']:7.3f} s | {100 * row['share']:5.1f}% | "
                  f"{row['calls']} calls")
    print(f"\nupdate: {update_seconds:.2f} s")
    for phase, seconds in summary["update_phases"].items():
        print(f"{phase:>28} | {seconds:6.2f} s")
    if args.json:
        write_json(args.json, summary)
    print(json.dumps({"decode_ms": round(sum(decode.values()) * 1e3, 1), "update_s": round(update_seconds, 2)}))
    return summary


if __name__ == "__main__":
    main()
