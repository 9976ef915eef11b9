"""train.py end to end on a tiny config: metrics and checkpoint written, resume continues at the right step,
bad configs and checkpoints refused with clear messages."""

import json
import os
import sys

import pytest
import torch

from transformers import LlamaConfig, LlamaForTokenClassification

from relevance import build
import discriminator
from runs import checkpoints
from policies import loading
from policies import toy
from policies import rollout
from runs import outputs
from tasks import registry
import train
from normalize import group_advantages, token_advantages
from rewards import response_reward, token_rewards
from rtt_grpo import combine_advantages, policy_loss
from tiny_models import build_tiny_chat_model

TINY = ["--relevance_threshold", "0", "--prompts_per_step", "2", "--group_size", "3", "--max_new_tokens", "12", "--eval_prompts", "3",
        "--eval_samples", "2", "--eval_every", "0", "--sample_every", "1", "--ckpt_every", "1"]


@pytest.fixture(autouse=True)
def tiny_cache(tmp_path_factory, monkeypatch):
    """Warm-start policy and discriminator built in seconds into a private cache (never the user's)."""
    monkeypatch.setenv("RTT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setitem(toy.WARM_START, "steps", 20)
    monkeypatch.setitem(build.TOY_SETTINGS, "steps", 20)


def read_steps(path):
    with open(path) as f:
        return [json.loads(line)["step"] for line in f]


def test_two_steps_then_resume(tmp_path):
    out = str(tmp_path / "run")
    summary = train.main(["--max_steps", "2", "--out_dir", out, *TINY])
    assert read_steps(os.path.join(out, "metrics.jsonl")) == [0, 1]
    state = torch.load(os.path.join(out, "ckpt.pt"), weights_only=False)
    assert state["step"] == 2
    for key in ("start", "final"):
        assert 0.0 <= summary[key]["instruction_accuracy"] <= summary[key]["rubric_accuracy"] <= 1.0
    with open(os.path.join(out, "summary.json")) as f:
        assert json.load(f)["wall_seconds"] == summary["wall_seconds"]
    with open(os.path.join(out, "metrics.jsonl")) as f:
        first = json.loads(f.readline())
    for key in ("reward/mean", "reward/frac_zero_std", "rubric/pass_rate", "adv/token_abs_mean",
                "completions/mean_length", "loss/policy", "clip_frac", "kl_old", "grad_norm", "time/generate",
                "time/judge", "time/relevance", "time/update"):
        assert key in first and first[key] == first[key], key                   # present and not NaN
    assert first["adv/token_abs_mean"] > 0                                       # the discriminator's signal arrived

    resumed = train.main(["--max_steps", "3", "--out_dir", out, "--resume", os.path.join(out, "ckpt.pt"), *TINY])
    assert read_steps(os.path.join(out, "metrics.jsonl")) == [0, 1, 2]
    assert torch.load(os.path.join(out, "ckpt.pt"), weights_only=False)["step"] == 3
    assert resumed["start"] == summary["start"]


def test_lam_zero_skips_relevance_and_gives_zero_token_advantage(tmp_path):
    out = str(tmp_path / "grpo")
    train.main(["--max_steps", "1", "--lam", "0", "--final_eval", "false", "--out_dir", out, *TINY])
    with open(os.path.join(out, "metrics.jsonl")) as f:
        metrics = json.loads(f.readline())
    assert metrics["relevance/mean"] == 0.0 and metrics["adv/token_abs_mean"] == 0.0


def test_bad_config_values_are_refused():
    with pytest.raises(SystemExit, match="unknown preset 'nope'"):
        train.parse_config(["nope"])
    with pytest.raises(SystemExit, match="--norm 'bogus'"):
        train.parse_config(["--norm", "bogus"])
    with pytest.raises(SystemExit, match="--lam >= 0"):
        train.parse_config(["--lam", "-1"])


def test_an_earlier_run_in_out_dir_is_moved_aside_not_mixed_in(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 0}\n')
    train.main(["--out_dir", str(out), "--max_steps", "1", "--final_eval", "false", *TINY])
    archived = [p for p in tmp_path.iterdir() if p.name.startswith("run-")]
    assert len(archived) == 1 and (archived[0] / "metrics.jsonl").read_text() == '{"step": 0}\n'
    assert read_steps(out / "metrics.jsonl") == [0]                              # the new run alone
    train.main(["--out_dir", str(out), "--max_steps", "1", "--final_eval", "false", "--overwrite", "true", *TINY])
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("run-")]) == 1   # --overwrite: deleted


def test_checkpoint_of_another_config_or_unreadable_is_refused(tmp_path):
    cfg = train.parse_config(["--lam", "0.5"])
    path = str(tmp_path / "ckpt.pt")
    torch.save({"policy": {}, "optimizer": {}, "step": 1, "config": {**vars(cfg), "lam": 1.0}}, path)
    with pytest.raises(SystemExit, match="another config.*lam"):
        checkpoints.load_checkpoint(path, vars(cfg), train.RUN_DEFINING)
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match="cannot read checkpoint"):
        checkpoints.load_checkpoint(str(tmp_path / "broken.pt"), vars(cfg), train.RUN_DEFINING)


def test_prompt_batches_are_a_permutation_per_epoch():
    prompts = [{"id": str(i)} for i in range(10)]
    seen = [p["id"] for step in range(5) for p in registry.prompt_batch(prompts, step, 2, seed=3)]
    assert sorted(seen) == sorted(p["id"] for p in prompts)
    assert registry.prompt_batch(prompts, 7, 2, seed=3) == registry.prompt_batch(prompts, 7, 2, seed=3)


@pytest.mark.parametrize("loss_agg", ["seq-mean-token-mean", "token-mean"])
def test_weighted_micro_batches_give_the_full_batch_gradient(loss_agg):
    """train.py's gradient accumulation: pieces weighted by loss_weights sum to the one-batch loss and gradient."""
    model, tokenizer = build_tiny_chat_model("llama", seed=4)
    prompt_ids = rollout.encode_prompts(tokenizer, [{"prompt": "Write about the sea."}, {"prompt": "Hi."}])
    response_ids, token_mask = rollout.generate(model, tokenizer, prompt_ids, 3, 7,
                                                generator=torch.Generator().manual_seed(2))  # (B, G, T)
    flat_prompts = [ids for ids in prompt_ids for _ in range(3)]
    flat_ids, flat_mask = response_ids.flatten(0, 1), token_mask.flatten(0, 1)          # (N, T)
    advantages = torch.randn(flat_ids.shape, generator=torch.Generator().manual_seed(0))  # (N, T)

    def gradient(pieces):
        model.zero_grad(set_to_none=True)
        total = 0.0
        for rows, weight in zip(pieces, train.loss_weights(pieces, flat_mask, loss_agg)):
            logp = rollout.response_logprobs(model, flat_prompts[rows], flat_ids[rows], flat_mask[rows], tokenizer)
            loss, _ = policy_loss(logp, logp.detach(), advantages[rows], flat_mask[rows], agg=loss_agg)
            (loss * weight).backward()
            total += loss.item() * weight
        return total, torch.cat([p.grad.flatten() for p in model.parameters()])

    full_loss, full_grad = gradient([slice(0, len(flat_prompts))])
    pieces = rollout.microbatches(len(flat_prompts), row_tokens=20, max_batch_tokens=40)
    assert len(pieces) == 3
    piece_loss, piece_grad = gradient(pieces)
    assert piece_loss == pytest.approx(full_loss, abs=1e-6)
    torch.testing.assert_close(piece_grad, full_grad, atol=1e-6, rtol=1e-4)


def test_paper_preset_on_a_tiny_llama_with_hybrid_judge_discriminator_and_micro_batches(tmp_path):
    """The real-model path of train.py end to end: a hub-style policy directory, a JSONL rubric dataset, the hybrid
    judge (rule checkers + an LLM judge), a saved discriminator sharing the policy's tokenizer, chunked rollouts
    and micro-batched updates, in float32 on the CPU."""
    model, tokenizer = build_tiny_chat_model("llama", seed=5)
    policy_dir, disc_dir = str(tmp_path / "policy"), str(tmp_path / "disc")
    model.save_pretrained(policy_dir)
    tokenizer.save_pretrained(policy_dir)
    _, chat_tokenizer = loading.load_policy(policy_dir)                         # eos = end-of-turn, pad set
    torch.manual_seed(0)
    disc = LlamaForTokenClassification(LlamaConfig(
        vocab_size=len(chat_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, num_labels=1, pad_token_id=chat_tokenizer.pad_token_id))
    discriminator.save_discriminator(disc, chat_tokenizer, disc_dir)
    rows = [{"id": f"q{i}", "prompt": f"Write about the sea, part {i}.",
             "rubrics": [{"type": "include", "args": {"word": "sea"}, "description": "Include 'sea'."},
                         "The answer is friendly."]} for i in range(6)]
    data_path = tmp_path / "rubrics.jsonl"
    data_path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = str(tmp_path / "run")
    summary = train.main([
        "paper", "--policy", policy_dir, "--data", str(data_path), "--judge", "hybrid", "--judge_model", policy_dir,
        "--discriminator", disc_dir, "--dtype", "float32", "--device", "cpu", "--max_steps", "2",
        "--prompts_per_step", "2", "--group_size", "2", "--max_new_tokens", "6", "--max_batch_tokens", "40",
        "--eval_prompts", "1", "--eval_samples", "1", "--eval_every", "0", "--out_dir", out])
    assert read_steps(os.path.join(out, "metrics.jsonl")) == [0, 1]
    with open(os.path.join(out, "metrics.jsonl")) as f:
        metrics = [json.loads(line) for line in f]
    assert all(m["grad_norm"] == m["grad_norm"] and m["time/relevance"] > 0 for m in metrics)
    assert summary["start"]["n_prompts"] == 1 and "final_unseen_combos" not in summary
    assert torch.load(os.path.join(out, "ckpt.pt"), weights_only=False)["step"] == 2
    # eval.py reloads the checkpoint as train.py loaded the policy: the trained weights, the chat end-of-turn eos
    evaluated, eval_tokenizer, _ = loading.load_checkpoint_policy(os.path.join(out, "ckpt.pt"))
    trained = torch.load(os.path.join(out, "ckpt.pt"), weights_only=False)["policy"]
    assert all(torch.equal(evaluated.state_dict()[name], value) for name, value in trained.items())
    assert eval_tokenizer.eos_token == "<|eot_id|>" == chat_tokenizer.eos_token


def test_real_model_configs_missing_a_part_are_refused():
    with pytest.raises(SystemExit, match="needs --data"):
        train.parse_config(["paper"])
    built_on_first_use = train.parse_config(["paper", "--data", "x.jsonl", "--judge", "rule"])
    assert built_on_first_use.relevance == "discriminator" and built_on_first_use.discriminator == ""
    with pytest.raises(SystemExit, match="needs --judge_model"):
        train.parse_config(["paper", "--data", "x.jsonl", "--relevance", "uniform"])
    with pytest.raises(SystemExit, match="toy policy only knows"):
        train.parse_config(["--data", "ifeval"])
    with pytest.raises(SystemExit, match="oracle needs Rubric World"):
        train.parse_config(["smollm2", "--relevance", "oracle"])


def advantages_of(cfg, scores, rubric_mask, relevance, token_term):
    """Step 4 of train.train, line for line: R, Â, r = s·w, Ã over the token-term tokens, A."""
    resp_adv = group_advantages(response_reward(scores, rubric_mask, cfg.reward), cfg.eps)          # (B, G)
    tok_adv = token_advantages(cfg.norm, token_rewards(scores, relevance), token_term, rubric_mask, scores, cfg.eps)
    return resp_adv, tok_adv, combine_advantages(resp_adv, tok_adv, cfg.lam, cfg.method)             # (B, G, T)


def test_the_end_of_sequence_token_left_to_the_response_advantage():
    """eos_token_advantage False: A = Â exactly on the left-out token, the token term still sums to zero over
    the remaining tokens of each response, and uniform relevance on them still gives GRPO."""
    torch.manual_seed(0)
    b, g, k, t = 2, 4, 3, 6
    scores = torch.where(torch.rand(b, g, k) < 0.6, 1.0, -1.0)                  # (B, G, K)
    rubric_mask = torch.tensor([[True, True, True], [True, True, False]])       # (B, K)
    lengths = torch.tensor([[6, 4, 5, 3], [2, 6, 4, 5]])                         # (B, G), EOS last
    token_mask = torch.arange(t) < lengths[..., None]                            # (B, G, T)
    eos = torch.arange(t) == (lengths - 1)[..., None]                            # (B, G, T)
    content = token_mask & ~eos
    relevance = torch.rand(b, g, k, t) * token_mask[:, :, None, :]               # (B, G, K, T)
    cfg = train.parse_config(["--eos_token_advantage", "False"])
    resp_adv, tok_adv, adv = advantages_of(cfg, scores, rubric_mask, relevance, content)
    assert torch.equal(tok_adv[eos], torch.zeros(int(eos.sum())))
    assert torch.equal(adv[eos], resp_adv[..., None].expand(b, g, t)[eos])
    torch.testing.assert_close(tok_adv.sum(-1), torch.zeros(b, g), atol=1e-5, rtol=0)
    assert tok_adv[content].abs().sum() > 0
    _, _, with_eos = advantages_of(train.parse_config([]), scores, rubric_mask, relevance, token_mask)
    assert not torch.equal(with_eos[eos], adv[eos])
    uniform = content[:, :, None, :].expand(b, g, k, t).float()
    _, _, grpo = advantages_of(cfg, scores, rubric_mask, uniform, content)
    assert torch.equal(grpo, resp_adv[..., None].expand(b, g, t))


def test_a_rubric_world_regime_runs_end_to_end_and_logs_reward_hacking(tmp_path):
    summary = train.main(["--max_steps", "1", "--data", "rubric_world:global", "--out_dir", str(tmp_path / "g"), *TINY,
                          "--eval_every", "1"])
    assert "final" in summary and "final_unseen_combos" not in summary          # a regime has no unseen split
    assert {r["type"] for p in registry.load_splits("rubric_world:global")["train"] for r in p["rubrics"]} == {
        "length", "count", "parts"}
    with open(tmp_path / "g" / "metrics.jsonl") as f:
        assert 0.0 <= json.loads(f.readline())["hacking/repeated_rubric_word"] <= 1.0
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments"))
    import study                                                                 # reads the files this run wrote
    result = study.run_result(str(tmp_path / "g"))
    assert set(result["per_type"]) <= {"length", "count", "parts"} and result["per_type"]
    assert result["instruction_accuracy"] == summary["final"]["sampled"]["instruction_accuracy"]
    assert result["collapsed"] is False and 0.0 <= result["hacking_final"] <= 1.0


def guard_steps(guard, pass_rates, length=10.0):
    return [guard.update({"completions/mean_length": length, "rubric/pass_rate": p}) for p in pass_rates]


def test_collapse_guard_ignores_one_noisy_step_and_flags_a_sustained_fall():
    window = outputs.CollapseGuard.WINDOW
    noisy = guard_steps(outputs.CollapseGuard(), [0.25, 0.67, 0.08] + [0.3] * (2 * window))   # one bad step
    assert not any(noisy)
    falling = guard_steps(outputs.CollapseGuard(), [0.5] * window + [0.1] * window)
    assert not any(falling[:-1]) and "rubric pass rate fell from 0.50" in falling[-1]           # at step 2W − 1
    shrinking = outputs.CollapseGuard()
    assert not any(guard_steps(shrinking, [0.5] * window, length=20.0))
    assert "mean response length fell from 20.0" in guard_steps(shrinking, [0.5] * window, length=2.0)[-1]


def test_collapse_guard_state_survives_json_like_a_checkpoint():
    window = outputs.CollapseGuard.WINDOW
    straight = guard_steps(outputs.CollapseGuard(), [0.5] * window + [0.1] * window)
    first = outputs.CollapseGuard()
    guard_steps(first, [0.5] * window + [0.1] * 3)
    resumed = outputs.CollapseGuard(json.loads(json.dumps(first.state)))
    assert guard_steps(resumed, [0.1] * (window - 3)) == straight[window + 3:]
