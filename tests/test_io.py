"""Saving and loading pruned models: identical logits, clear errors, no pickle."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from tests.models import tiny_batch, tiny_bert, tiny_distilbert, tiny_roberta
from tests.test_shrink import random_masks, randomize
from trimformer.io import PrunedModelError, build_architecture, load_pruned, save_pruned
from trimformer.shrink import ShrinkPlan, layer_shapes, shrink


def pruned(make=tiny_bert, seed=0):
    model = randomize(make(num_layers=3, seed=seed), seed)
    plan = shrink(model, random_masks(model, seed)[0])
    return model, plan


def logits(model):
    with torch.no_grad():
        return model(**tiny_batch()).logits


@pytest.mark.parametrize("make", [tiny_bert, tiny_roberta, tiny_distilbert])
def test_roundtrip_identical_logits(tmp_path, make, monkeypatch):
    model, plan = pruned(make)
    folder = save_pruned(model, tmp_path / "out", plan=plan)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "plan.json",
                                                         "trimformer.json"]
    monkeypatch.setattr(pickle, "loads", None)  # loading must never unpickle
    monkeypatch.setattr(pickle, "load", None)
    loaded = load_pruned(folder)
    assert type(loaded) is type(model)
    assert layer_shapes(loaded) == layer_shapes(model)
    assert torch.equal(logits(loaded), logits(model))
    assert ShrinkPlan.from_json((folder / "plan.json").read_text()) == plan


def test_architecture_from_config_alone(tmp_path):
    """Timing a point trained elsewhere needs only its config.json: the shape, with random weights."""
    model, _ = pruned()
    folder = save_pruned(model, tmp_path / "out")
    (folder / "model.safetensors").unlink()
    assert layer_shapes(build_architecture(folder)) == layer_shapes(model)
    dense = build_architecture(folder, dense=True)
    assert layer_shapes(dense) == layer_shapes(tiny_bert(num_layers=3))
    assert layer_shapes(dense) != layer_shapes(model)


def test_dense_model_and_overwrite(tmp_path):
    model = randomize(tiny_bert(), 3)
    folder = tmp_path / "m"
    save_pruned(model, folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["trimformer_heads_per_layer"] == [4, 4]
    del config["trimformer_heads_per_layer"], config["trimformer_ffn_per_layer"]
    (folder / "config.json").write_text(json.dumps(config))  # a plain transformers config is fine
    assert torch.equal(logits(load_pruned(folder)), logits(model))
    shrunk, _ = pruned()
    save_pruned(shrunk, folder)  # replaces the previous model
    assert torch.equal(logits(load_pruned(folder)), logits(shrunk))
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temp folders left behind
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        save_pruned(model, tmp_path / "other")


def test_tied_weights_masked_lm(tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                       intermediate_size=64, max_position_embeddings=64)).eval()
    mask = torch.ones(64, 32)
    mask[:16] = 0
    shrink(model, {"bert.encoder.layer.1.intermediate.dense": {"weight": mask}})
    loaded = load_pruned(save_pruned(model, tmp_path / "mlm"))
    assert loaded.cls.predictions.decoder.weight.data_ptr() == loaded.bert.embeddings.word_embeddings.weight.data_ptr()
    with torch.no_grad():
        assert torch.equal(loaded(**tiny_batch()).logits, model(**tiny_batch()).logits)


@pytest.fixture
def saved(tmp_path):
    model, plan = pruned()
    return save_pruned(model, tmp_path / "out", plan=plan)


def test_missing_folder_and_files(tmp_path, saved):
    with pytest.raises(PrunedModelError, match="folder not found"):
        load_pruned(tmp_path / "nope")
    (saved / "model.safetensors").unlink()
    with pytest.raises(PrunedModelError, match="model.safetensors"):
        load_pruned(saved)


def test_missing_config(saved):
    (saved / "config.json").unlink()
    with pytest.raises(PrunedModelError, match="config.json"):
        load_pruned(saved)


@pytest.mark.parametrize("cut", [10, 1000])
def test_truncated_safetensors(saved, cut):
    path = saved / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-cut])
    with pytest.raises(PrunedModelError, match="model.safetensors"):
        load_pruned(saved)


def test_garbage_safetensors(saved):
    (saved / "model.safetensors").write_bytes(b"\x80\x04not a safetensors file" * 10)
    with pytest.raises(PrunedModelError, match="model.safetensors"):
        load_pruned(saved)


def test_edited_config_shape_mismatch(saved):
    config = json.loads((saved / "config.json").read_text())
    config["trimformer_ffn_per_layer"][2] += 1
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(PrunedModelError, match="does not match the shapes in config.json"):
        load_pruned(saved)


def test_impossible_records(saved):
    config = json.loads((saved / "config.json").read_text())
    config["trimformer_heads_per_layer"] = [9, 1, 1]
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(PrunedModelError, match="config.json: per-layer records"):
        load_pruned(saved)


def test_missing_and_unexpected_keys(saved):
    from safetensors.torch import load_file, save_file

    path = saved / "model.safetensors"
    state = load_file(str(path))
    key = next(k for k in state if k.endswith("pooler.dense.bias"))
    save_file({k: v for k, v in state.items() if k != key}, str(path))
    with pytest.raises(PrunedModelError, match="lacks tensors"):
        load_pruned(saved)
    save_file({**state, "extra.weight": torch.zeros(2)}, str(path))
    with pytest.raises(PrunedModelError, match="no place for"):
        load_pruned(saved)


def test_bad_metadata_and_json(saved):
    (saved / "trimformer.json").write_text(json.dumps({"format": "trimformer-pruned", "version": 99}))
    with pytest.raises(PrunedModelError, match="trimformer.json"):
        load_pruned(saved)
    (saved / "trimformer.json").unlink()
    (saved / "config.json").write_text("{not json")
    with pytest.raises(PrunedModelError, match="config.json"):
        load_pruned(saved)


def test_write_atomic_concurrent_writers(tmp_path, monkeypatch):
    """Writers of one file never share a temp file (points finishing together on a GPU machine each
    rewrite frontier.png; a fixed `.tmp` name let one rename the other's file away), and a failed write
    leaves the old file and no temp file behind."""
    from concurrent.futures import ThreadPoolExecutor

    from trimformer import io

    target = tmp_path / "plot.png"
    payloads = [bytes([i]) * 4096 for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda p: [io.write_atomic(target, p) for _ in range(25)], payloads))
    assert target.read_bytes() in payloads
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(io.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        io.write_json(target, {"a": 1})
    assert target.read_bytes() in payloads
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]


def test_written_files_get_the_umask_mode_not_the_temp_files(tmp_path):
    """mkstemp / mkdtemp make owner-only entries; renamed into place, a saved model, its masks and
    JSON would be unreadable to anyone else (found as 0600 report.json and 0700 model folders)."""
    import os
    import stat

    from trimformer.distill import save_teacher_logits
    from trimformer.io import write_json
    from trimformer.masks import save_masks

    old = os.umask(0o022)
    try:
        model, _ = pruned()
        folder = save_pruned(model, tmp_path / "model")
        write_json(tmp_path / "report.json", {"a": 1})
        save_masks(random_masks(tiny_bert(num_layers=2), 0)[0], tmp_path / "masks.safetensors")
        save_teacher_logits(torch.zeros(4, 2), tmp_path / "logits.safetensors")
    finally:
        os.umask(old)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    written = [tmp_path / name for name in ("report.json", "masks.safetensors", "logits.safetensors")]
    for path in [*folder.iterdir(), *written]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
