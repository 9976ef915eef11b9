"""Run by tests/test_trl_rtt.py under `torchrun --nproc_per_node 2` (gloo on a CPU); argument: an output folder.

1. Every token normalisation: a fixed global batch of 3 groups of G = 4 is split 6 + 6 rows over the two processes
   (group 1 on both), with different completion lengths T and rubric counts K on each; every process's A must equal
   its rows of the one-process result on the whole batch. Prints "same advantages as one process" per norm and rank.
2. One training step of RTTGRPOTrainer (rubric_group, random relevance) under DDP: the weights must agree on both
   processes afterwards. Prints "weights agree across processes after a step".
"""

import os
import sys

import torch
from accelerate import Accelerator

from engines.trl_rtt import RTTConfig, rtt_batch_advantages
from normalize import TOKEN_NORMS
from rewards import response_reward
from trl_setup import make_items, run


class OneProcess:
    """The accelerator of a single process: gathers and pads nothing."""
    process_index = 0

    @staticmethod
    def gather(tensor):
        return tensor

    @staticmethod
    def pad_across_processes(tensor, dim=0, pad_index=0):
        return tensor


def whole_batch():
    """12 completions (3 groups of 4): rows 0-5 on process 0 (T = 5, K = 2), rows 6-11 on process 1 (T = 7, K = 3)."""
    generator = torch.Generator().manual_seed(0)
    lengths = torch.tensor([5, 3, 4, 2, 5, 1, 7, 6, 2, 7, 3, 5])
    ids = torch.randint(10, 50, (12, 7), generator=generator)
    mask = torch.arange(7)[None] < lengths[:, None]                               # (N, T)
    ids[torch.arange(12), lengths - 1] = 9                                        # every completion ends in EOS
    ids[~mask] = 0
    valid = torch.tensor([[1, 1, 0]] * 8 + [[1, 1, 1]] * 4, dtype=torch.bool)     # groups 0-1: K = 2; group 2: K = 3
    verdicts = torch.where(torch.rand(12, 3, generator=generator) < 0.5, 1.0, -1.0) * valid
    weights = torch.rand(12, 3, 7, generator=generator) * mask[:, None] * valid[..., None]
    rewards = response_reward(verdicts.view(3, 4, 3), valid.view(3, 4, 3)[:, 0], "aon").view(-1)
    grouped = rewards.view(3, 4)
    resp_adv = ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-4)).view(-1)
    return ids, mask, verdicts, valid, weights, resp_adv


def main(out_dir: str) -> None:
    accelerator = Accelerator(cpu=True)
    rank = accelerator.process_index
    ids, mask, verdicts, valid, weights, resp_adv = whole_batch()
    rows = slice(6 * rank, 6 * rank + 6)
    width = 5 if rank == 0 else 7
    k_size = 2 if rank == 0 else 3
    for norm in TOKEN_NORMS:
        rtt = RTTConfig(lam=0.5, norm=norm, relevance="random", eos_token_advantage=False)
        expected, _, _ = rtt_batch_advantages(OneProcess(), 4, resp_adv, verdicts, valid, weights, ids, mask, [9], rtt)
        local, _, _ = rtt_batch_advantages(accelerator, 4, resp_adv[rows], verdicts[rows, :k_size],
                                           valid[rows, :k_size], weights[rows, :k_size, :width], ids[rows, :width],
                                           mask[rows, :width], [9], rtt)
        if not torch.equal(local, expected[rows, :width]):
            raise SystemExit(f"rank {rank}, {norm}: two processes differ from one by "
                             f"{(local - expected[rows, :width]).abs().max().item()}")
        print(f"rank {rank} {norm}: same advantages as one process", flush=True)
    final, _ = run(f"{out_dir}/run", make_items(), RTTConfig(lam=0.5, norm="rubric_group", relevance="random"),
                   max_steps=1, per_device_train_batch_size=4)
    flat = torch.cat([value.flatten().float() for value in final.values()])
    everyone = accelerator.gather(flat[None])                                     # (2, n_parameters)
    if not torch.equal(everyone[0], everyone[1]):
        raise SystemExit("the two processes hold different weights after a step")
    print(f"rank {rank}: weights agree across processes after a step", flush=True)
    # Every check has passed. Leave together and skip the interpreter's teardown: there gloo's threads were now and
    # then destroyed while still joinable ("terminate called without an active exception", SIGABRT after all output).
    torch.distributed.barrier()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1])
