"""engines/trl_rtt.py: RTT inside TRL's GRPOTrainer (trl 1.16.0), on a CPU with a tiny local Llama.

1. λ = 0, and uniform relevance under intra-sample normalisation, train to TRL's GRPO weights bit for bit.
2. For the completions and verdicts TRL produced, A is train.py's recipe; the two differ only by Â's ε.
3. A has the completions' shape and is 0 on padding; in tied all-or-nothing groups GRPO has no gradient, RTT has.
4. Two processes give one process's advantages (tests/trl_two_processes.py, run with torchrun).
5. TRL's loss types, gradient accumulation and steps_per_generation > 1 move the weights; sign-test features refused.
6. engines/train_trl.py maps train.py's settings onto GRPOConfig, refuses what TRL cannot take, trains and saves.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from accelerate import Accelerator
from transformers import AutoModelForCausalLM
from trl.trainer.utils import nanstd

import engines.trl_rtt as trl_rtt
from discriminator import build_toy_discriminator
from engines import train_trl
from engines.trl_rtt import RTTConfig, rtt_batch_advantages
from normalize import TOKEN_NORMS, rtt_advantages
from rewards import response_reward
from tiny_models import build_tiny_chat_model, write_policy_and_rubrics
from trl_setup import make_items, run, same_weights

TESTS = os.path.dirname(os.path.abspath(__file__))


def trl_response_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Â as GRPOTrainer computes it (scale_rewards="group"): (R − group mean) / (Bessel std + 1e-4). (N,) -> (N,)"""
    grouped = rewards.view(-1, group_size)
    mean = grouped.mean(dim=1).repeat_interleave(group_size)
    std = nanstd(grouped, dim=1).repeat_interleave(group_size)
    return (rewards - mean) / (std + 1e-4)


def train_py_advantages(ids, token_mask, scores, rubric_mask, weights, eos_id, group_size, rtt: RTTConfig):
    """train.py's step 4 on flattened completions: ids, token_mask (N, T); scores (N, K); weights (N, K, T)."""
    n_rows, width = ids.shape
    b_size = n_rows // group_size
    s = scores.view(b_size, group_size, -1)                                       # (B, G, K)
    valid = rubric_mask.view(b_size, group_size, -1)[:, 0]                       # (B, K)
    mask = token_mask.view(b_size, group_size, width)                             # (B, G, T)
    is_eos = mask & (ids.view(b_size, group_size, width) == eos_id)
    return rtt_advantages(response_reward(s, valid, "aon"), s, valid, weights.view(b_size, group_size, -1, width),
                          mask, is_eos, rtt.norm, rtt.lam, rtt.method, rtt.relevance_threshold,
                          rtt.eos_token_advantage, rtt.eps)


# ----------------------------------------------------------------------------- 1. GRPO exactly
def test_lam_zero_and_uniform_intra_train_to_trl_grpo_weights_bit_for_bit(tmp_path):
    items = make_items()
    grpo, trainer = run(tmp_path / "grpo", items, None)
    start, _ = build_tiny_chat_model("llama", seed=5)
    assert not same_weights(grpo, start.state_dict())                            # the baseline does learn
    lam_zero, _ = run(tmp_path / "lam0", items, RTTConfig(lam=0.0, relevance="uniform"))
    uniform, rtt_trainer = run(tmp_path / "uniform", items, RTTConfig(lam=0.5, relevance="uniform", norm="intra"))
    assert same_weights(grpo, lam_zero)
    assert same_weights(grpo, uniform)
    assert "rtt/token_advantage_abs_mean" in rtt_trainer.state.log_history[0]    # the token term did run
    assert rtt_trainer.state.log_history[0]["rtt/token_advantage_abs_mean"] == 0.0
    random_w, _ = run(tmp_path / "random", items, RTTConfig(lam=0.5, relevance="random", norm="intra"))
    assert not same_weights(grpo, random_w)                                       # a real token term changes them


# ----------------------------------------------------------------------------- 2. train.py's advantages
@pytest.mark.parametrize("norm", ["intra", "rubric_softmax"])
def test_the_trainer_gives_train_py_advantages_for_the_completions_trl_produced(tmp_path, monkeypatch, norm):
    seen = {}

    def recording_relevance(model, tokenizer, items, ids, mask, budget):
        seen["discriminator_ids"] = ids[:, 0].clone()
        return trl_rtt_relevance(model, tokenizer, items, ids, mask, budget)

    def recording_advantages(*args):
        seen["args"] = args
        seen["result"] = original(*args)
        return seen["result"]

    trl_rtt_relevance = trl_rtt.relevance
    original = trl_rtt.rtt_batch_advantages
    monkeypatch.setattr(trl_rtt, "relevance", recording_relevance)
    monkeypatch.setattr(trl_rtt, "rtt_batch_advantages", recording_advantages)
    _, tokenizer = build_tiny_chat_model("llama", seed=5)
    torch.manual_seed(0)
    discriminator = (build_toy_discriminator(tokenizer, hidden=16, layers=1), tokenizer)
    rtt = RTTConfig(lam=0.5, norm=norm, relevance="discriminator", relevance_threshold=0.0)
    run(tmp_path, make_items(), rtt, discriminator, max_steps=1)
    _, group_size, resp_adv, scores, rubric_mask, weights, ids, token_mask, eos_ids, _, _ = seen["args"]
    local, trl_batch, _ = seen["result"]
    assert torch.equal(seen["discriminator_ids"], ids)                            # w read the generated ids
    assert eos_ids == [tokenizer.eos_token_id]
    rewards = response_reward(scores[:, None], rubric_mask, "aon")[:, 0]          # (N,)  R
    assert torch.equal(resp_adv, trl_response_advantages(rewards, group_size))   # TRL's own Â, unchanged
    ours = train_py_advantages(ids, token_mask, scores, rubric_mask, weights, eos_ids[0], group_size, rtt)
    assert torch.equal(trl_batch.token, ours.token)                               # Ã bit for bit
    assert torch.equal(trl_batch.relevance, ours.relevance)
    epsilon_gap = (trl_batch.response - ours.response)                            # Â: ε 1e-4 (TRL) vs 1e-6
    assert 0 < epsilon_gap.abs().max() < 1e-3
    on_tokens = token_mask.view(ours.combined.shape)                             # (B, G, T)
    expected = ours.combined + epsilon_gap[..., None] * on_tokens                 # A differs by Â's gap, on tokens
    assert torch.allclose(local, expected.reshape(local.shape), atol=1e-6)


# ----------------------------------------------------------------------------- 3. shapes, padding, tied groups
def synthetic_batch(lengths: list[int], scores: list[list[float]], eos_id: int = 9):
    """N completions of the given lengths (the last token EOS), right-padded to the longest; K rubrics each."""
    width = max(lengths)
    ids = torch.randint(10, 50, (len(lengths), width), generator=torch.Generator().manual_seed(0))
    mask = torch.arange(width)[None] < torch.tensor(lengths)[:, None]            # (N, T)
    for row, length in enumerate(lengths):
        ids[row, length - 1] = eos_id
        ids[row, length:] = 0
    verdicts = torch.tensor(scores, dtype=torch.float32)                          # (N, K)
    weights = torch.rand(len(lengths), verdicts.shape[1], width, generator=torch.Generator().manual_seed(1))
    return ids, mask, verdicts, torch.ones_like(verdicts, dtype=torch.bool), weights * mask[:, None]


@pytest.mark.parametrize("norm", TOKEN_NORMS)
def test_advantages_have_the_completions_shape_are_zero_on_padding_and_live_in_tied_groups(norm):
    ids, mask, verdicts, valid, weights = synthetic_batch([3, 5, 2, 4, 6, 6, 1, 3],
                                                          [[1, -1], [-1, -1], [-1, 1], [-1, -1],    # tied: AON all 0
                                                           [1, 1], [1, -1], [-1, -1], [1, 1]])
    rewards = response_reward(verdicts.view(2, 4, 2), valid.view(2, 4, 2)[:, 0], "aon").view(-1)
    resp_adv = trl_response_advantages(rewards, 4)
    rtt = RTTConfig(lam=0.5, norm=norm, relevance="random", eos_token_advantage=False)
    local, batch, _ = rtt_batch_advantages(Accelerator(cpu=True), 4, resp_adv, verdicts, valid, weights, ids,
                                           mask, [9], rtt)
    assert local.shape == ids.shape and local.dtype == resp_adv.dtype
    assert torch.all(local[~mask] == 0)
    assert torch.all(batch.response[0] == 0)                                      # tied group: Â = 0
    assert local[:4][mask[:4] & (ids[:4] != 9)].abs().sum() > 0                  # ... but the token term is not
    eos = mask & (ids == 9)
    assert torch.equal(local[eos], resp_adv[:, None].expand_as(local)[eos])      # EOS: Â only


def test_in_tied_groups_grpo_has_no_gradient_and_rtt_does(tmp_path):
    items = make_items(rubrics=("has_vowel", "never"))                            # AON is 0 for every response
    grpo, grpo_trainer = run(tmp_path / "grpo", items, None, max_steps=1)
    rtt, rtt_trainer = run(tmp_path / "rtt", items, RTTConfig(lam=0.5, norm="rubric_group", relevance="uniform"),
                           max_steps=1)
    start, _ = build_tiny_chat_model("llama", seed=5)
    assert grpo_trainer.state.log_history[0]["frac_reward_zero_std"] == 1.0
    assert grpo_trainer.state.log_history[0]["grad_norm"] == 0.0 and same_weights(grpo, start.state_dict())
    assert rtt_trainer.state.log_history[0]["grad_norm"] > 0 and not same_weights(rtt, start.state_dict())


# ----------------------------------------------------------------------------- 4. two processes
def test_two_processes_give_the_advantages_of_one_and_train_in_step(tmp_path):
    """A group split across the two processes, different T and K on each; then one DDP step of the trainer."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([os.path.dirname(TESTS), TESTS])}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             os.path.join(TESTS, "trl_two_processes.py"), str(tmp_path)],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("same advantages as one process") == 2 * len(TOKEN_NORMS), result.stdout[-2000:]
    assert result.stdout.count("weights agree across processes after a step") == 2, result.stdout[-2000:]


# ----------------------------------------------------------------------------- 5. TRL's features
@pytest.mark.parametrize("config", [dict(loss_type="grpo"), dict(loss_type="dapo"), dict(loss_type="dr_grpo"),
                                    dict(loss_type="bnpo", gradient_accumulation_steps=2, per_device_train_batch_size=4,
                                         steps_per_generation=2)])
def test_trl_loss_types_and_accumulation_move_the_weights(tmp_path, config):
    weights, trainer = run(tmp_path, make_items(), RTTConfig(lam=0.5, norm="inter", relevance="random"), max_steps=1,
                           **config)
    start, _ = build_tiny_chat_model("llama", seed=5)
    assert not same_weights(weights, start.state_dict())
    assert trainer.state.log_history[0]["rtt/token_advantage_abs_mean"] > 0


REFUSED = [(dict(loss_type="vespo"), "vespo is refused"),
           (dict(off_policy_mask_threshold=0.5), "off_policy_mask_threshold is refused"),
           (dict(multi_objective_aggregation="normalize_then_sum"), "sum_then_normalize")]


@pytest.mark.parametrize("config, message", REFUSED)
def test_features_that_test_a_sequences_advantage_sign_are_refused(tmp_path, config, message):
    with pytest.raises(ValueError, match=message):
        run(tmp_path, make_items(), RTTConfig(relevance="uniform"), max_steps=1, **config)


def test_bad_settings_are_refused_with_a_message(tmp_path):
    with pytest.raises(ValueError, match="norm must be one of"):
        RTTConfig(norm="intra_sample")
    with pytest.raises(ValueError, match="give a discriminator exactly when"):
        run(tmp_path, make_items(), RTTConfig(relevance="discriminator"), max_steps=1)
    with pytest.raises(ValueError, match="an 'item' column"):
        trl_rtt.RubricReward(None, [])(["p"], ["c"])


# ----------------------------------------------------------------------------- 6. the command
def test_train_trl_maps_train_py_settings_onto_grpo_config():
    cfg, vllm = train_trl.parse(["--group_size", "4", "--prompts_per_step", "6", "--loss_agg", "token-mean",
                                 "--ppo_epochs", "2", "--kl_coef", "0.1", "--device", "cpu"])
    args = train_trl.grpo_config(cfg, 2, torch.device("cpu"), vllm)
    assert (args.num_generations, args.per_device_train_batch_size, args.num_iterations) == (4, 12, 2)
    assert (args.loss_type, args.beta, args.epsilon, args.epsilon_high) == ("dapo", 0.1, 0.2, 0.27)
    assert args.use_cpu and not args.bf16 and not args.use_vllm and args.lr_scheduler_type == "constant_with_warmup"
    assert train_trl.parse(["smollm2"])[0].max_new_tokens == 128                    # the preset's value, as train.py


@pytest.mark.parametrize("argv, message", [(["--eval_every", "5"], "--eval_every has no place in the TRL trainer"),
                                           (["--relevance", "oracle"], "--relevance oracle and --norm released_code"),
                                           (["--dtype", "bfloat16", "--device", "cpu"], "bfloat16 on a CPU"),
                                           (["--vllm", "server", "--device", "cpu"], "--vllm needs CUDA"),
                                           (["--vllm", "fast"], "is not one of off, colocate, server")])
def test_train_trl_refuses_what_trl_cannot_take_in_one_line(argv, message):
    with pytest.raises(SystemExit, match=message):
        train_trl.parse(argv)


def test_train_trl_refuses_a_batch_that_does_not_split_over_the_processes():
    cfg, vllm = train_trl.parse(["--group_size", "3", "--prompts_per_step", "3", "--device", "cpu"])
    with pytest.raises(SystemExit, match="9 completions per step do not split over 2 processes"):
        train_trl.grpo_config(cfg, 2, torch.device("cpu"), vllm)


def test_train_trl_trains_a_chat_policy_on_a_rubric_file_and_saves_it(tmp_path):
    policy_dir, data = write_policy_and_rubrics(tmp_path, n_prompts=20, avoid="the")
    rubrics = [{"type": "lowercase", "args": {}, "description": "Use no capital letters."},   # rubrics the random
               {"type": "length", "args": {"lo": 1, "hi": 3}, "description": "Use 1 to 3 words."}]  # policy splits on
    rows = [{"id": f"q{i}", "prompt": f"Write about the sea, part {i}.", "rubrics": rubrics} for i in range(20)]
    (tmp_path / "rubrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "run"
    summary = train_trl.main(["--policy", policy_dir, "--data", data, "--relevance", "uniform", "--norm",
                              "rubric_group", "--max_steps", "1", "--prompts_per_step", "4", "--group_size", "4",
                              "--max_new_tokens", "16", "--lr", "1e-2", "--warmup_steps", "0", "--device", "cpu",
                              "--out_dir", str(out)])
    assert summary["steps"] == 1 and summary["processes"] == 1
    start, _ = build_tiny_chat_model("llama", seed=5)
    trained = AutoModelForCausalLM.from_pretrained(summary["final_policy"])
    assert not same_weights(trained.state_dict(), start.state_dict())
    assert (out / "summary.json").exists()
