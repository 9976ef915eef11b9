"""build_discriminator.py: the toy discriminator is cached by what it was built from and rebuilt when that changes."""

import pytest
import torch

import build_discriminator
import rubric_world


def test_load_or_train_caches_by_settings(tmp_path, monkeypatch, capsys):
    small = rubric_world.make_splits(seed=0, n_train=8, n_val=1, n_test=1, n_unseen=1)
    monkeypatch.setattr(rubric_world, "make_splits", lambda seed=0: small)
    settings = {"hidden": 16, "layers": 1, "heads": 2, "steps": 3, "batch_size": 4}
    model, tok = build_discriminator.load_or_train_toy_discriminator(cache_dir=str(tmp_path / "d"), settings=settings)
    assert "toy discriminator" in capsys.readouterr().out
    again, _ = build_discriminator.load_or_train_toy_discriminator(cache_dir=str(tmp_path / "d"), settings=settings)
    assert capsys.readouterr().out == ""                                         # loaded, not retrained
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    build_discriminator.load_or_train_toy_discriminator(cache_dir=str(tmp_path / "d"), settings={**settings, "steps": 4})
    assert "toy discriminator" in capsys.readouterr().out                        # other settings: retrained
    with pytest.raises(ValueError, match="unknown discriminator settings"):
        build_discriminator.load_or_train_toy_discriminator(cache_dir=str(tmp_path / "d"), settings={"step": 3})

