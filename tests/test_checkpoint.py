"""Training-state checkpoints: bit-exact resume, corruption, interrupted saves."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch

from tests.models import tiny_batch, tiny_bert
from trimformer import checkpoint as ckpt
from trimformer.checkpoint import CheckpointError, has_checkpoint, load_checkpoint, save_checkpoint
from trimformer.masks import apply_masks

MASKED = "bert.encoder.layer.0.intermediate.dense"


def _setup(seed: int = 0, masked: bool = False):
    model = tiny_bert(seed=seed)
    if masked:  # registered before the optimizer, as a pruning stage does
        mask = (torch.arange(64 * 32).reshape(64, 32) % 3 != 0).float()
        apply_masks(model, {MASKED: {"weight": mask}})
    model.train()  # dropout on: only a restored torch RNG makes the resumed run identical
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (1 + s))
    return model, optimizer, scheduler


def _train(model, optimizer, scheduler, steps: int) -> list[torch.Tensor]:
    losses = []
    for _ in range(steps):
        # The batch depends on the python and numpy RNGs, so their restore is tested too.
        batch = tiny_batch(seed=random.randrange(1000) + int(np.random.randint(1000)))
        labels = torch.randint(0, 2, (3,))
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        losses.append(loss.detach())
    return losses


def _assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("masked", [False, True])
def test_resume_is_bit_exact(tmp_path, masked):
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    model, optimizer, scheduler = _setup(masked=masked)
    _train(model, optimizer, scheduler, 3)
    folder = save_checkpoint(tmp_path / "ckpt", model=model, optimizer=optimizer, scheduler=scheduler, step=3,
                             extra_tensors={"ema": torch.ones(2)}, extra_meta={"stage": "distill"})
    assert has_checkpoint(folder)
    want = _train(model, optimizer, scheduler, 3)

    torch.manual_seed(99), random.seed(99), np.random.seed(99)  # scrambled: the load must restore them
    fresh, fresh_opt, fresh_sched = _setup(seed=7, masked=masked)
    state = load_checkpoint(folder, model=fresh, optimizer=fresh_opt, scheduler=fresh_sched)
    assert state.step == 3 and state.extra_meta == {"stage": "distill"}
    assert torch.equal(state.extra_tensors["ema"], torch.ones(2))
    assert fresh_sched.last_epoch == 3 and fresh_opt.param_groups[0]["betas"] == (0.9, 0.999)
    got = _train(fresh, fresh_opt, fresh_sched, 3)

    assert all(torch.equal(w, g) for w, g in zip(want, got, strict=True))
    _assert_same_state(model, fresh)
    assert fresh_opt.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    for p, q in zip(model.parameters(), fresh.parameters(), strict=True):
        for name, value in optimizer.state[p].items():
            assert torch.equal(value, fresh_opt.state[q][name]), name
    if masked:  # the masked weights are still zero after resuming
        assert (fresh.get_submodule(MASKED).weight.flatten()[::3] == 0).all()


def test_no_pickle_and_layout(tmp_path):
    model, optimizer, scheduler = _setup(masked=True)
    _train(model, optimizer, scheduler, 1)
    folder = save_checkpoint(tmp_path / "c", model=model, optimizer=optimizer, scheduler=scheduler, step=1)
    assert sorted(os.listdir(folder)) == ["meta.json", "state.safetensors"]
    assert sorted(os.listdir(tmp_path)) == ["c"]  # no temp or old folders left behind
    keys = ckpt.load_file(str(folder / "state.safetensors")).keys()
    assert f"model.{MASKED}.parametrizations.weight.original" in keys
    assert "optim.state.0.exp_avg" in keys and "rng.torch" in keys
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["step"] == 1 and meta["scheduler"]["lr_lambdas"] == [None]


def test_mismatch_and_corruption_raise(tmp_path):
    model, optimizer, scheduler = _setup()
    folder = save_checkpoint(tmp_path / "c", model=model, optimizer=optimizer, scheduler=scheduler, step=0)
    with pytest.raises(CheckpointError, match="state.safetensors"):
        load_checkpoint(folder, model=tiny_bert(hidden=16, heads=2))
    with pytest.raises(CheckpointError, match="state.safetensors"):  # masks must be registered first
        load_checkpoint(folder, model=_setup(masked=True)[0])

    data = bytearray((folder / "state.safetensors").read_bytes())
    data[-5] ^= 0xFF
    (folder / "state.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(folder, model=model)
    (folder / "meta.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="meta.json"):
        load_checkpoint(folder, model=model)
    (folder / "state.safetensors").unlink()
    assert not has_checkpoint(folder)
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        load_checkpoint(folder, model=model)


def test_interrupted_saves_keep_the_previous_checkpoint(tmp_path, monkeypatch):
    model, optimizer, scheduler = _setup()
    folder = tmp_path / "c"
    save_checkpoint(folder, model=model, optimizer=optimizer, scheduler=scheduler, step=1)

    def boom(*args, **kwargs):
        raise OSError("killed while writing")

    with monkeypatch.context() as m:  # dies while writing the temp folder
        m.setattr(ckpt, "save_file", boom)
        with pytest.raises(OSError):
            save_checkpoint(folder, model=model, optimizer=optimizer, scheduler=scheduler, step=2)
    assert load_checkpoint(folder, model=model, optimizer=optimizer).step == 1

    real_replace = os.replace

    def replace(src, dst):  # dies between "old aside" and "new into place"
        if str(dst) == str(folder):
            raise OSError("killed between renames")
        return real_replace(src, dst)

    with monkeypatch.context() as m:
        m.setattr(ckpt.os, "replace", replace)
        with pytest.raises(OSError):
            save_checkpoint(folder, model=model, optimizer=optimizer, scheduler=scheduler, step=3)
    assert not folder.exists() and has_checkpoint(folder)
    assert load_checkpoint(folder, model=model, optimizer=optimizer, scheduler=scheduler).step == 1

    save_checkpoint(folder, model=model, optimizer=optimizer, scheduler=scheduler, step=4)  # recovers, then saves
    assert load_checkpoint(folder, model=model).step == 4
    assert sorted(os.listdir(tmp_path)) == ["c"]


def test_refuses_foreign_folder(tmp_path):
    model, optimizer, scheduler = _setup()
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        save_checkpoint(tmp_path / "c", model=model, optimizer=None, scheduler=None, step=0)
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path / "d", model=model, optimizer=None, scheduler=None, step=0,
                        extra_meta={"bad": object()})
    assert not (tmp_path / "d").exists()
