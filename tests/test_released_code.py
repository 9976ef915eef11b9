"""released_code.py pins the authors' pipeline as it runs: integer weights, the reshape across G and K, EOS in."""

import torch

import released_code
import train
from normalize import intra_sample_token_norm


def batch(seed, b=2, g=3, k=2, t=6):
    gen = torch.Generator().manual_seed(seed)
    scores = torch.where(torch.rand(b, g, k, generator=gen) < 0.5, -1.0, 1.0)    # (B, G, K)
    relevance = torch.rand(b, g, k, t, generator=gen)                            # (B, G, K, T) soft
    token_mask = torch.arange(t) < torch.randint(2, t + 1, (b, g), generator=gen)[..., None]  # (B, G, T)
    return scores, relevance, token_mask, torch.ones(b, k, dtype=torch.bool)


def test_it_is_intra_sample_on_truncated_weights_read_through_the_reshape():
    scores, relevance, token_mask, rubric_mask = batch(0)
    b, g, k, t = relevance.shape
    truncated = (relevance.to(torch.bfloat16) >= 1).float()                     # every soft w is 0 here
    assert torch.equal(released_code.integer_buffer(relevance), truncated)
    expected = intra_sample_token_norm((scores[..., None] * truncated).reshape(b, k, g, t).transpose(1, 2).contiguous(),
                                       token_mask, rubric_mask)
    out = released_code.token_advantages("released_code", scores[..., None] * relevance, token_mask, rubric_mask, scores)
    assert torch.equal(out, expected) and torch.equal(out, torch.zeros_like(out))  # soft relevance is lost entirely


def test_it_agrees_with_the_paper_where_the_reshape_is_exact_and_weights_are_binary():
    for k_size, g_size in ((1, 4), (3, 1)):
        scores, relevance, token_mask, rubric_mask = batch(1, g=g_size, k=k_size)
        binary = (relevance > 0.5).float()
        rewards = scores[..., None] * binary
        torch.testing.assert_close(released_code.token_advantages("released_code", rewards, token_mask, rubric_mask,
                                                                  scores), intra_sample_token_norm(rewards, token_mask,
                                                                                                    rubric_mask))


def test_changing_response_j_changes_response_i_as_in_the_released_code():
    scores, relevance, token_mask, rubric_mask = batch(2)
    binary = (relevance > 0.5).float()
    before = released_code.token_advantages("released_code", scores[..., None] * binary, token_mask, rubric_mask, scores)
    flipped = binary.clone()
    flipped[:, -1] = 1 - flipped[:, -1]                                           # only the last response changes
    after = released_code.token_advantages("released_code", scores[..., None] * flipped, token_mask, rubric_mask, scores)
    assert not torch.equal(before[:, :-1], after[:, :-1])


def test_train_reaches_it_only_by_its_name_with_the_other_two_behaviours():
    assert train.parse_config([]).norm == "intra"
    cfg = train.parse_config(["--norm", "released_code", "--eos_token_advantage", "True", "--relevance_threshold", "0"])
    assert cfg.norm == "released_code"
    for flags in (["--norm", "released_code"], ["--norm", "released_code", "--relevance_threshold", "0"]):
        try:
            train.parse_config(flags)
        except SystemExit as refusal:
            assert "released_code" in str(refusal)
        else:
            raise AssertionError(f"{flags} was accepted")
