"""report: JSON round trip, Markdown table, PNG plot, total sparsity."""

from __future__ import annotations

import json
import warnings
from dataclasses import fields

import pytest
from torch import nn

from tests.models import tiny_bert, tiny_distilbert
from trimformer.report import RunReport, StagePoint, load_report, total_sparsity, write_report


def _report() -> RunReport:
    return RunReport(
        task="sst2", model="all-MiniLM-L6-v2", main_metric="accuracy",
        dense_metrics={"accuracy": 0.9083, "loss": 0.25}, pruned_metrics={"accuracy": 0.8991, "loss": 0.31},
        total_sparsity=0.6875, heads_per_layer=[12, 7, 0, 5, 3, 2],
        ffn_per_layer=[1536, 900, 512, 300, 200, 100],
        params_before=22_713_216, params_after=12_345_678, flops_ratio=3.21,
        latency_dense_s=0.0421, latency_pruned_s=0.0155, speedup=2.716,
        stage_seconds={"finetune": 120.0, "heads": 300.5},
        model_dir="runs/sst2/model",
        points=[StagePoint("finetune", 0.9083, 1.0, 0.0, 120.0),
                StagePoint("heads", 0.9012, 1.62, 0.3, 300.5),
                StagePoint("ffn-3", 0.8991, 2.716, 0.6875, 410.0)],
        extra={"target_speedup": 2.5, "note": "tiny"},
    )


def test_write_report_writes_all_three_files(tmp_path):
    paths = write_report(_report(), tmp_path / "out")
    assert set(paths) == {"json", "md", "png"}
    assert all(p.parent == tmp_path / "out" and p.exists() for p in paths.values())
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]  # no temp files left


def test_json_has_all_keys_and_round_trips(tmp_path):
    report = _report()
    paths = write_report(report, tmp_path)
    data = json.loads(paths["json"].read_text())
    assert set(data) == {f.name for f in fields(RunReport)}
    assert load_report(tmp_path) == report
    assert load_report(paths["json"]) == report
    assert RunReport.from_dict(report.to_dict()) == report


def test_markdown_has_the_tables_and_numbers(tmp_path):
    text = write_report(_report(), tmp_path)["md"].read_text()
    assert "| stage | metric | speedup | sparsity |" in text
    assert "| heads | 0.9012 | 1.62x | 30.00% |" in text
    assert "| accuracy | 0.9083 | 0.8991 |" in text
    assert "68.75%" in text and "3.21x" in text and "2.72x" in text
    assert "| latency (ms) | 42.10 | 15.50 |" in text
    assert "22,713,216" in text and "12,345,678" in text
    assert "12, 7, 0, 5, 3, 2" in text and "1536, 900, 512, 300, 200, 100" in text
    assert "target_speedup" in text


def test_png_is_a_valid_image(tmp_path):
    png = write_report(_report(), tmp_path)["png"]
    data = png.read_bytes()
    assert len(data) > 1000
    assert data[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_without_points_still_plots(tmp_path):
    report = _report()
    report.points = []
    report.dense_metrics = {}
    assert write_report(report, tmp_path)["png"].stat().st_size > 0


def test_load_report_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="no run report"):
        load_report(tmp_path)
    (tmp_path / "report.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_report(tmp_path)
    data = _report().to_dict()
    del data["speedup"]
    (tmp_path / "report.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="speedup"):
        load_report(tmp_path)
    data = _report().to_dict()
    data["params_after"] = "many"
    (tmp_path / "report.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="invalid run report"):
        load_report(tmp_path)


def test_total_sparsity_of_a_model_with_itself_is_zero():
    model = tiny_bert()
    assert total_sparsity(model, model) == 0.0
    assert total_sparsity(tiny_distilbert(), tiny_distilbert()) == 0.0


def test_total_sparsity_after_halving_every_ffn():
    dense, pruned = tiny_bert(hidden=32, ffn=64), tiny_bert(hidden=32, ffn=64)
    for block in pruned.bert.encoder.layer:
        block.intermediate.dense = nn.Linear(32, 32)
        block.output.dense = nn.Linear(32, 32)
    # Per layer: 4 * 32 * 32 attention + 2 * 32 * 64 FFN weights; half of the FFN goes.
    assert total_sparsity(dense, pruned) == pytest.approx((32 * 64) / (4 * 32 * 32 + 2 * 32 * 64))


def test_total_sparsity_with_a_headless_and_a_dropped_layer():
    dense, pruned = tiny_bert(num_layers=3), tiny_bert(num_layers=3)
    attention = pruned.bert.encoder.layer[0].attention
    attention.self = nn.Identity()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        attention.output.dense = nn.Linear(0, 32)
    del pruned.bert.encoder.layer[2]
    per_layer = 4 * 32 * 32 + 2 * 32 * 64
    kept = per_layer + (per_layer - 4 * 32 * 32)
    assert total_sparsity(dense, pruned) == pytest.approx(1 - kept / (3 * per_layer))
