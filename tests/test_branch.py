"""bench/branch.py: a branch keeps a point's stages up to one stage and nothing after it."""

from __future__ import annotations

import json

import pytest

from tests.bench_scripts import load_bench

branch = load_bench("branch")


def fake_point(root):
    for stage in ("finetune", "attention", "heads", "distil", "ffn"):
        folder = root / "stages" / stage
        (folder / "model").mkdir(parents=True)
        (folder / "checkpoint").mkdir()
        (folder / "done.json").write_text(json.dumps({"stage": stage, "metrics": {"accuracy": 0.5}}))
    (root / "target.json").write_text("{}")
    (root / "teacher_logits.safetensors").write_bytes(b"x")
    (root / "report.json").write_text("{}")
    return root


def test_branch_keeps_the_stages_up_to_the_one_named(tmp_path):
    source = fake_point(tmp_path / "trimformer-3")
    target = tmp_path / "trimformer-3+x"
    branch.branch_dir(source, target, "distil")
    assert sorted(p.name for p in (target / "stages").iterdir()) == ["attention", "distil", "finetune", "heads"]
    assert (target / "stages" / "distil" / "model").is_dir()
    assert not (target / "stages" / "distil" / "checkpoint").exists()  # a finished stage needs none
    assert (target / "target.json").is_file() and (target / "teacher_logits.safetensors").is_file()
    assert not (target / "report.json").exists()
    assert list(branch.stage_metrics(target)) == ["finetune", "attention", "heads", "distil"]


def test_a_branch_stopped_early_records_its_stages_beside_the_source_points(tmp_path):
    import argparse

    source = fake_point(tmp_path / "trimformer-3")
    out = tmp_path / "trimformer-3+taylor"
    branch.branch_dir(source, out, "finetune")
    for stage, value in (("attention", 0.7), ("heads", 0.7), ("distil", 0.8)):  # what the branch's run wrote
        (out / "stages" / stage).mkdir(parents=True)
        (out / "stages" / stage / "done.json").write_text(json.dumps({"metrics": {"accuracy": value}}))
    args = argparse.Namespace(task="cola", point="trimformer-3", name="taylor", after="finetune",
                              override=["attention.score=taylor"], stop_after="distil")
    row = branch.branch_row(args, source, out, 1.0, "python -m trimformer run ...")
    assert row["stop_after"] == "distil" and "pruned_metric" not in row  # no report.json was read
    assert row["stages"]["distil"] == {"accuracy": 0.8} and "ffn" not in row["stages"]
    assert row["source_stages"]["distil"] == {"accuracy": 0.5} and "ffn" in row["source_stages"]


def test_branch_refuses_a_stage_the_point_has_not_finished(tmp_path):
    source = fake_point(tmp_path / "p")
    (source / "stages" / "ffn" / "done.json").unlink()
    with pytest.raises(SystemExit, match="has not finished stage 'ffn'"):
        branch.branch_dir(source, tmp_path / "q", "ffn")


frontier = load_bench("frontier")


def test_a_calibrated_point_starts_from_the_trimformer_point_after_its_distil_stage(tmp_path):
    work = tmp_path / "work"
    shared = fake_point(work / "cola" / "finetune")
    source = fake_point(work / "cola" / "trimformer-3")
    (source / "stages" / "distil" / "model" / "marker").write_text("trained")
    out = frontier.start_point("cola", "calibrated", 3.0, work, shared)
    assert out == work / "cola" / "calibrated-3"
    assert (out / "stages" / "distil" / "model" / "marker").read_text() == "trained"
    assert not (out / "stages" / "ffn").exists()
    # no finished source point (x5): a fresh start from the shared fine-tune only
    fresh = frontier.start_point("cola", "calibrated", 5.0, work, shared)
    assert sorted(p.name for p in (fresh / "stages").iterdir()) == ["finetune"]
    # a tutorial point never borrows another method's stages
    assert sorted(p.name for p in (frontier.start_point("cola", "tutorial", 3.0, work, shared) / "stages").iterdir()) \
        == ["finetune"]


def test_a_branch_folder_resumes_only_for_the_same_branch(tmp_path):
    source = fake_point(tmp_path / "taylor-3")
    out = tmp_path / "taylor-3+x"
    branch.prepare(source, out, "finetune", ["attention.allocation=layer"])
    (out / "stages" / "attention").mkdir()
    (out / "stages" / "attention" / "done.json").write_text("{}")  # the branch's own run got this far
    branch.prepare(source, out, "finetune", ["attention.allocation=layer"])
    assert (out / "stages" / "attention" / "done.json").is_file()  # resumed
    branch.prepare(source, out, "finetune", ["attention.allocation=global_norm"])
    assert not (out / "stages" / "attention").exists()  # another branch of that name: made afresh
    legacy = fake_point(tmp_path / "taylor-3+old")  # a folder from before the record: made afresh
    branch.prepare(source, legacy, "finetune", [])
    assert not (legacy / "stages" / "attention").exists()


def test_a_branch_of_a_branch_inherits_its_overrides(tmp_path):
    source = fake_point(tmp_path / "taylor-5")
    first = tmp_path / "taylor-5+dec97"
    branch.prepare(source, first, "finetune", ["attention.taylor_decay=0.97"])
    second = tmp_path / "taylor-5+dec97+chan"
    branch.prepare(first, second, "finetune", ["ffn.score=channel"])
    assert branch.source_overrides(source) == []
    assert branch.source_overrides(first) == ["attention.taylor_decay=0.97"]
    assert branch.source_overrides(second) == ["attention.taylor_decay=0.97", "ffn.score=channel"]
