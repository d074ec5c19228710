"""The GPU frontier driver's bookkeeping (bench/device_frontier.py): what a finished point keeps and
what the archive brings back."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

from tests.bench_scripts import load_bench

driver = load_bench("device_frontier")


def _point(root: Path) -> Path:
    point = root / "stsb" / "trimformer-3"
    for rel in ("model/config.json", "model/model.safetensors", "report.json", "target.json",
                "stages/heads/done.json", "stages/heads/model/plan.json", "stages/heads/model/model.safetensors",
                "stages/ffn/checkpoint/config.json", "teacher_logits.safetensors", "run.log"):
        (point / rel).parent.mkdir(parents=True, exist_ok=True)
        (point / rel).write_text("{}")
    return point


def test_finished_point_drops_weights_and_keeps_records(tmp_path):
    point = _point(tmp_path)
    driver.drop_weights(point)
    assert not list(point.rglob("*.safetensors"))
    assert (point / "model" / "config.json").is_file() and (point / "report.json").is_file()


def test_a_point_another_method_branches_from_keeps_its_weights(tmp_path):
    point = _point(tmp_path)  # stsb/trimformer-3: `calibrated` starts from its distil stage
    driver.point_finished(tmp_path, "stsb", "trimformer", "3")
    assert (point / "stages" / "heads" / "model" / "model.safetensors").is_file()
    assert (point / "teacher_logits.safetensors").is_file()
    other = tmp_path / "stsb" / "tutorial-3"
    (other / "model").mkdir(parents=True)
    (other / "model" / "model.safetensors").write_text("{}")
    driver.point_finished(tmp_path, "stsb", "tutorial", "3")
    assert not (other / "model" / "model.safetensors").exists()


def test_archive_holds_results_records_configs_and_logs(tmp_path):
    work, results, logs = tmp_path / "work", tmp_path / "work" / "results", tmp_path / "work" / "logs"
    _point(work)
    results.mkdir(parents=True)
    (results / "stsb-trimformer-3.json").write_text(json.dumps({"task": "stsb"}))
    logs.mkdir()
    (logs / "stsb-trimformer-3.log").write_text("ok")
    out = tmp_path / "frontier.tar.gz"
    driver.pack(out, work, results, logs)
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
    assert "results/stsb-trimformer-3.json" in names and "logs/stsb-trimformer-3.log" in names
    point = "work/stsb/trimformer-3"
    assert {f"{point}/model/config.json", f"{point}/report.json", f"{point}/target.json",
            f"{point}/stages/heads/done.json", f"{point}/stages/heads/model/plan.json"} <= names
    assert not any(n.endswith((".safetensors", ".log")) and n.startswith("work/") for n in names)
    assert f"{point}/stages/ffn/checkpoint/config.json" not in names  # mid-stage checkpoints stay behind
