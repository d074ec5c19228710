"""Integration: the packaged MiniLM through every stage on a small slice of real SST-2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.models import minilm_path
from trimformer.cli import main

GLUE = Path(__file__).resolve().parents[1].parent / "shared" / "glue"


@pytest.mark.skipif(not (GLUE / "SST-2" / "train.tsv").is_file(), reason="../shared/glue is not here")
def test_minilm_smoke_run_on_real_sst2(tmp_path):
    out = tmp_path / "out"
    code = main(["run", "--model", minilm_path(), "--task", "sst2", "--glue-dir", str(GLUE), "--recipe", "smoke",
                 "--output-dir", str(out), "--max-train-samples", "48", "--max-eval-samples", "48",
                 "finetune.max_steps=4", "attention.max_steps=6", "distil.max_steps=2", "ffn.max_steps=6",
                 "final_distil.max_steps=2", "bench.repeats=2"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["heads_per_layer"] == [6] * 6  # half of 12 heads, whole heads removed
    assert report["ffn_per_layer"] == [768] * 6
    assert report["params_after"] < report["params_before"]
    assert 0.0 <= report["pruned_metrics"]["accuracy"] <= 1.0
