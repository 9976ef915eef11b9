"""What a GPU run with bf16 and the paper's lengths needs, proved on a CPU: float32 master weights under bf16 autocast,
the LM head on response positions only, every generation within the memory budget, the sampler's tempered
log-probs, no extra forward at μ = 1, the --preset flag, checkpoints evaluated on their own data, checkpoints read
without running code, exact resume, and metrics that mean what they say."""

import json
import os

import pytest
import torch

import eval as evaluation
from runs import checkpoints
from policies import loading
from policies import rollout
from runs import outputs
from tasks import registry
import train
from tiny_models import build_tiny_chat_model, write_policy_and_rubrics

PROMPTS = [{"id": "p0", "prompt": "Write a short text about the sea.",
            "rubrics": [{"type": "include", "args": {"word": "sea"}, "description": "Include 'sea'."}]},
           {"id": "p1", "prompt": "Start with the word boat.",
            "rubrics": [{"type": "exclude", "args": {"word": "the"}, "description": "Avoid 'the'."}]}]


def batch(model, tokenizer, group_size=3, max_new=6, seed=0):
    prompt_ids = rollout.encode_prompts(tokenizer, PROMPTS)
    response_ids, token_mask = rollout.generate(model, tokenizer, prompt_ids, group_size, max_new,
                                                generator=torch.Generator().manual_seed(seed))   # (B, G, T)
    advantages = torch.randn(response_ids.shape, generator=torch.Generator().manual_seed(seed))  # (B, G, T)
    return prompt_ids, response_ids, token_mask, advantages


def updated_weights(model, tokenizer, data, amp, steps=3, lr=1e-6, ppo_epochs=1):
    """Three of train.policy_update's AdamW steps on one fixed batch; returns the flattened weights after."""
    cfg = train.parse_config(["--group_size", str(data[1].shape[1]), "--ppo_epochs", str(ppo_epochs)])
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    for _ in range(steps):
        train.policy_update(model, None, optimizer, tokenizer, cfg, *data, amp)
    return torch.cat([p.detach().float().flatten() for p in model.parameters()])


def test_bf16_compute_with_float32_master_weights_moves_every_weight_and_follows_float32(tmp_path):
    """At lr 1e-6, an AdamW update of bf16 weights rounds away; float32 master weights under bf16 autocast move."""
    base, tokenizer = build_tiny_chat_model("llama", seed=7)
    base.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model, tokenizer, amp = loading.load_for_training(str(tmp_path), "cpu", "float32")
    start = torch.cat([p.detach().flatten() for p in model.parameters()])
    data = batch(model, tokenizer)
    float32 = updated_weights(model, tokenizer, data, amp)
    model, _, amp = loading.load_for_training(str(tmp_path), "cpu", "bfloat16")
    assert all(p.dtype == torch.float32 for p in model.parameters())           # master weights
    bf16_compute = updated_weights(model, tokenizer, data, amp)
    naive, _ = loading.load_policy(str(tmp_path), "cpu", "bfloat16")              # bf16 weights, updated in place
    naive_start = torch.cat([p.detach().float().flatten() for p in naive.parameters()])
    naive_bf16 = updated_weights(naive, tokenizer, data, lambda: torch.autocast("cpu", enabled=False))
    moved = lambda after, before=start: float((after != before).float().mean())    # noqa: E731
    assert moved(float32) > 0.95 and moved(bf16_compute) > 0.95
    assert moved(naive_bf16, naive_start) < 0.2                                    # the defect, measurable
    step_float32, step_bf16 = float32 - start, bf16_compute - start
    assert torch.linalg.vector_norm(step_bf16 - step_float32) < 0.3 * torch.linalg.vector_norm(step_float32)
    assert torch.nn.functional.cosine_similarity(step_bf16, step_float32, dim=0) > 0.95
    with pytest.raises(ValueError, match="float16 needs loss scaling"):
        loading.load_for_training(str(tmp_path), "cpu", "float16")


def test_the_lm_head_runs_on_response_positions_only_in_chunks():
    """A 1500-token prompt: the head sees the response tokens alone (prompt positions would be (N, 1500, V) logits),
    at most LOGIT_CHUNK at a time, with and without gradient; generation applies it to the last position only."""
    model, tokenizer = build_tiny_chat_model("qwen2", seed=1, max_positions=2048)
    calls = []
    model.get_output_embeddings().register_forward_hook(lambda module, args, out: calls.append(out.shape[:-1].numel()))
    long_prompt = [{"prompt": "the boat sails near the quiet harbour " * 215}]
    prompt_ids = rollout.encode_prompts(tokenizer, long_prompt * 2)
    assert min(len(p) for p in prompt_ids) > 1500
    response_ids, token_mask = rollout.generate(model, tokenizer, prompt_ids, 2, 5,
                                                generator=torch.Generator().manual_seed(0))   # (B, G, T)
    assert calls and max(calls) == 2 * 2                                           # one position per row per step
    calls.clear()
    with torch.no_grad():
        rollout.response_logprobs(model, prompt_ids, response_ids, token_mask, tokenizer)
    assert sum(calls) == int(token_mask.sum()) and max(calls) <= rollout.LOGIT_CHUNK
    calls.clear()
    rollout.LOGIT_CHUNK, chunk = 3, rollout.LOGIT_CHUNK
    try:
        logp = rollout.response_logprobs(model, prompt_ids, response_ids, token_mask, tokenizer)
        logp.sum().backward()                                                      # chunks recomputed in backward
    finally:
        rollout.LOGIT_CHUNK = chunk
    assert max(calls) <= 3 and sum(calls) == 2 * int(token_mask.sum())             # forward + recomputation


def test_training_log_probs_are_the_samplers_tempered_log_probs():
    model, tokenizer = build_tiny_chat_model("llama", seed=2)
    prompt_ids, response_ids, token_mask, _ = batch(model, tokenizer)
    logp = rollout.response_logprobs(model, prompt_ids, response_ids, token_mask, tokenizer, temperature=0.7)
    suppress = rollout.suppressed_token_mask(tokenizer, model.config.vocab_size)
    with torch.no_grad():
        for b, prompt in enumerate(prompt_ids):
            for g in range(response_ids.shape[1]):
                response = response_ids[b, g][token_mask[b, g]].tolist()
                logits = model(input_ids=torch.tensor([prompt + response])).logits[0, len(prompt) - 1:-1]  # (T_g, V)
                tempered = (logits / 0.7).masked_fill(suppress, -float("inf")).log_softmax(-1)
                torch.testing.assert_close(logp[b, g, :len(response)], tempered[range(len(response)), response],
                                           atol=2e-5, rtol=1e-5)
    seen = []
    real = train.response_logprobs
    train.response_logprobs = lambda *args: seen.append(args[-1]) or real(*args)   # what train.py passes
    try:
        cfg = train.parse_config(["--group_size", "3", "--temperature", "0.7"])
        train.policy_update(model, None, torch.optim.AdamW(model.parameters()), tokenizer, cfg, prompt_ids,
                            response_ids, token_mask, torch.zeros(response_ids.shape),
                            lambda: torch.autocast("cpu", enabled=False))
    finally:
        train.response_logprobs = real
    assert seen and set(seen) == {0.7}


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_the_loss_scores_each_sampled_token_with_the_log_prob_the_sampler_drew_it_from(family, monkeypatch):
    """Where the sampler's arithmetic differs from the training forward (static cache, top-k candidates), the
    tempered log-prob of every sampled token at sampling time equals response_logprobs' (the loss's π_θold)."""
    model, tokenizer = build_tiny_chat_model(family, seed=3)
    seen = []
    real = rollout.sample_next

    def recording(logits, *args, **kwargs):
        seen.append(logits.float())                                                # (N, V), suppressed -inf
        return real(logits, *args, **kwargs)

    monkeypatch.setattr(rollout, "sample_next", recording)
    prompt_ids = rollout.encode_prompts(tokenizer, [{"prompt": "Tell me about boats."}, {"prompt": "Hi."}])
    with torch.no_grad():
        response_ids, token_mask = rollout.generate(model, tokenizer, prompt_ids, 3, 8, temperature=0.7, top_k=20,
                                                    top_p=0.9, generator=torch.Generator().manual_seed(0))
        logp = rollout.response_logprobs(model, prompt_ids, response_ids, token_mask, tokenizer, temperature=0.7)
    at_sampling = torch.stack([(z / 0.7).log_softmax(-1) for z in seen], dim=1)  # (N, T, V)
    flat_ids = response_ids.flatten(0, 1)                                          # (N, T)
    sampler = at_sampling.gather(-1, flat_ids[..., None]).squeeze(-1).reshape(response_ids.shape)
    assert int(token_mask.sum()) > 20
    torch.testing.assert_close(logp[token_mask], sampler[token_mask], atol=2e-5, rtol=1e-5)


def count_forwards(model):
    """Every forward of the policy's backbone, as (rows, sequence positions held) from its attention mask."""
    seen = []
    model.base_model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(
        tuple(kwargs["attention_mask"].shape)), with_kwargs=True)
    return seen


@pytest.mark.parametrize("ppo_epochs, forwards_per_piece", [(1, 1), (2, 3)])
def test_one_pass_per_batch_needs_no_old_log_prob_forward(ppo_epochs, forwards_per_piece):
    model, tokenizer = build_tiny_chat_model("llama", seed=3)
    data = batch(model, tokenizer)
    seen = count_forwards(model)
    cfg = train.parse_config(["--group_size", "3", "--ppo_epochs", str(ppo_epochs), "--max_batch_tokens", "60"])
    pieces = len(rollout.microbatches(6, max(map(len, data[0])) + data[1].shape[-1], 60))
    assert pieces > 1
    train.policy_update(model, None, torch.optim.AdamW(model.parameters()), tokenizer, cfg, *data,
                        lambda: torch.autocast("cpu", enabled=False))
    assert len(seen) == forwards_per_piece * pieces


def test_logged_clip_and_kl_are_token_means_over_the_whole_batch():
    """With two passes the clip fires; micro-batches of unequal token counts must log what one batch logs."""
    model, tokenizer = build_tiny_chat_model("llama", seed=4)
    data = batch(model, tokenizer, max_new=8)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    logged = []
    for budget in ("0", "40"):
        model.load_state_dict(state)
        cfg = train.parse_config(["--group_size", "3", "--ppo_epochs", "2", "--lr", "0.05", "--max_batch_tokens", budget])
        _, metrics, _ = train.policy_update(model, None, torch.optim.AdamW(model.parameters(), lr=cfg.lr), tokenizer,
                                            cfg, *data, lambda: torch.autocast("cpu", enabled=False))
        logged.append(metrics)
    assert logged[0]["clip_frac"] > 0
    for name in ("clip_frac", "approx_kl_old", "ratio_mean"):
        assert logged[1][name] == pytest.approx(logged[0][name], abs=1e-5), name


def test_preset_flag_and_positional_preset_are_the_same():
    assert train.parse_config(["--preset", "smollm2"]) == train.parse_config(["smollm2"])
    assert train.parse_config(["--preset=smollm2", "--lr", "3e-6"]) == train.parse_config(["smollm2", "--lr", "3e-6"])
    with pytest.raises(SystemExit, match="two presets"):
        train.parse_config(["toy", "--preset", "smollm2"])
    with pytest.raises(SystemExit, match="--help lists every flag"):
        train.parse_config(["--lamda", "0"])


def write_run_inputs(tmp_path):
    """A tiny Llama chat policy directory and a JSONL rubric dataset judged by Rubric World's rule checkers."""
    return write_policy_and_rubrics(tmp_path, n_prompts=40, avoid="boat")


def tiny_run(policy_dir, data_path, out, *flags):
    return ["paper", "--policy", policy_dir, "--data", data_path, "--judge", "rule", "--relevance", "random",
            "--dtype", "float32", "--device", "cpu", "--prompts_per_step", "2", "--group_size", "2",
            "--max_new_tokens", "5", "--eval_prompts", "2", "--eval_samples", "2", "--eval_every", "1",
            "--sample_every", "1", "--ckpt_every", "1", "--out_dir", out, *flags]


def test_every_generation_and_forward_stays_within_the_memory_budget(tmp_path, monkeypatch):
    """Rollouts, updates, and the start / periodic / final evaluations of train.py, and eval.py: no forward of the
    policy holds more than --max_batch_tokens sequence positions (rows x positions of its attention mask)."""
    policy_dir, data_path = write_run_inputs(tmp_path)
    seen = []
    real = loading.load_for_training

    def watched(*args, **kwargs):
        model, tokenizer, amp = real(*args, **kwargs)
        seen.append(count_forwards(model))
        return model, tokenizer, amp

    monkeypatch.setattr(train, "load_for_training", watched)
    longest = max(len(ids) for ids in rollout.encode_prompts(loading.load_policy(policy_dir)[1],
                                                             registry.load_splits(data_path)["train"]))
    budget = 2 * 2 * (longest + 5)                                                 # two prompts' G = 2 rows per chunk
    train.main(tiny_run(policy_dir, data_path, str(tmp_path / "run"), "--max_steps", "2", "--max_batch_tokens",
                        str(budget), "--eval_prompts", "4"))                        # 4 prompts x 2 samples: 2 chunks
    shapes = seen[0]
    assert len(shapes) > 20 and max(rows * positions for rows, positions in shapes) <= budget
    assert max(rows for rows, _ in shapes) > 1                                     # the budget was used, not 1 row

    eval_seen = []
    real_checkpoint = loading.load_checkpoint_policy

    def watched_checkpoint(*args, **kwargs):
        model, tokenizer, config = real_checkpoint(*args, **kwargs)
        eval_seen.append(count_forwards(model))
        return model, tokenizer, config

    monkeypatch.setattr(evaluation, "load_checkpoint_policy", watched_checkpoint)
    evaluation.main(["--checkpoint", str(tmp_path / "run" / "ckpt.pt"), "--samples", "2", "--max_new_tokens", "5",
                     "--max_batch_tokens", str(budget)])
    assert max(rows * positions for rows, positions in eval_seen[0]) <= budget


def test_a_checkpoint_is_evaluated_on_its_own_data_and_judge(tmp_path):
    policy_dir, data_path = write_run_inputs(tmp_path)
    train.main(tiny_run(policy_dir, data_path, str(tmp_path / "run"), "--max_steps", "1", "--final_eval", "false"))
    ckpt = str(tmp_path / "run" / "ckpt.pt")
    result = evaluation.main(["--checkpoint", ckpt, "--samples", "0", "--max_new_tokens", "4"])
    assert result["data"] == data_path and result["judge"] == "rule" and result["n_prompts"] == 4  # its test split
    assert set(result) >= {"rule"} and result["rule"]["greedy"]["per_type"].keys() == {"include", "exclude"}
    with pytest.raises(SystemExit, match="trained on --data"):
        evaluation.main(["--checkpoint", ckpt, "--data", "rubric_world"])
    with pytest.raises(SystemExit, match="prompts it trained on"):
        evaluation.main(["--checkpoint", ckpt, "--split", "train"])


def test_a_checkpoint_trained_on_ifeval_style_prompts_is_scored_on_the_benchmarks_they_were_kept_apart_from(
        monkeypatch):
    config = {"data": "ifeval_train", "judge": "ifeval", "policy": "smollm2"}
    monkeypatch.setattr(evaluation, "read_checkpoint", lambda path: {"config": config})
    monkeypatch.setattr(registry, "load_splits", lambda data: pytest.fail("built the training set"))
    args = evaluation.EvalArgs(checkpoint="ckpt.pt", data="ifbench", split="all", limit=3)
    prompts, judges, source = evaluation.resolve(args, "cpu")
    assert len(prompts) == 3 and source["judge"] == "ifbench" and set(judges) == {"strict", "loose"}
    assert type(judges["strict"]).__name__ == "IFBenchJudge"                     # the benchmark's judge, not its own
    for data, split, message in (("rubric_world", "test", "or on ifeval or on ifbench, not on rubric_world"),
                                 ("ifeval_train", "all", "prompts it trained on")):
        with pytest.raises(SystemExit, match=message):
            evaluation.resolve(evaluation.EvalArgs(checkpoint="ckpt.pt", data=data, split=split), "cpu")


class Payload:
    """Unpickling this object runs code (here: it writes a file)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_reading_a_checkpoint_never_executes_code_from_it(tmp_path):
    marker = str(tmp_path / "code_ran")
    path = tmp_path / "evil.pt"
    torch.save({"policy": {}, "step": 1, "config": {"policy": "toy"}, "payload": Payload(marker)}, path)
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        checkpoints.read_checkpoint(str(path))
    with pytest.raises(SystemExit, match="cannot read checkpoint"):
        checkpoints.load_checkpoint(str(path), {}, ())
    assert not os.path.exists(marker)
    torch.load(path, weights_only=False)["payload"].close()                       # unpickled without weights_only,
    assert os.path.exists(marker)                                                  # the payload does run


def comparable(path):
    return [{k: v for k, v in json.loads(line).items() if not k.startswith("time/")} for line in open(path)]


def test_resume_continues_exactly_as_an_uninterrupted_run(tmp_path):
    """Random relevance (its own generator), samples.txt, the collapse guard's reference: 4 steps straight and
    2 + resume to 4 write the same metrics, samples and summary."""
    policy_dir, data_path = write_run_inputs(tmp_path)
    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    whole = train.main(tiny_run(policy_dir, data_path, straight, "--max_steps", "4"))
    train.main(tiny_run(policy_dir, data_path, split, "--max_steps", "2"))
    with open(os.path.join(split, "samples.txt"), "a") as f:                       # a crash after the checkpoint:
        f.write("\n===== step 2 =====\n[q] partial\n")                             # a half-written later step
    with open(os.path.join(split, "metrics.jsonl"), "a") as f:
        f.write(json.dumps({"step": 2, "reward/mean": -1.0}) + "\n")
    resumed = train.main(tiny_run(policy_dir, data_path, split, "--max_steps", "4", "--resume",
                                  os.path.join(split, "ckpt.pt")))
    assert comparable(os.path.join(split, "metrics.jsonl")) == comparable(os.path.join(straight, "metrics.jsonl"))
    assert open(os.path.join(split, "samples.txt")).read() == open(os.path.join(straight, "samples.txt")).read()
    assert comparable(os.path.join(split, "evals.jsonl")) == comparable(os.path.join(straight, "evals.jsonl"))
    assert resumed["final"] == whole["final"] and resumed["collapse"] == whole["collapse"]
    guard = checkpoints.read_checkpoint(os.path.join(split, "ckpt.pt"))["run_state"]["collapse_guard"]
    assert guard == checkpoints.read_checkpoint(os.path.join(straight, "ckpt.pt"))["run_state"]["collapse_guard"]
    assert guard["steps"] == 4                                                     # not restarted at the resume


def test_relevance_mean_counts_real_rubrics_only():
    scores = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]])                             # (B=1, G=2, K=2)
    rubric_mask = torch.tensor([[True, False]])                                    # one real rubric, one padded
    token_mask = torch.tensor([[[True, True, False], [True, False, False]]])       # (B, G, T)
    relevance = (rubric_mask[:, None, :, None] & token_mask[:, :, None, :]).float()  # uniform w = 1 where real
    metrics = outputs.step_metrics(scores, rubric_mask, torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 2, 3),
                                     relevance, torch.zeros(1, 2, 3, dtype=torch.long), token_mask, eos_id=9)
    assert metrics["relevance/mean"] == 1.0
