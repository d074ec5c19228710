"""Two CPU processes (gloo) through `accelerate launch`: same masks and metric as one process."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.pipeline_fixtures import TINY_OVERRIDES, write_sst2, write_tiny_model

RUN = ["--task", "sst2", "--recipe", "smoke", *TINY_OVERRIDES]


def env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.mark.skipif(shutil.which("accelerate") is None and not os.path.exists(
    os.path.join(os.path.dirname(sys.executable), "accelerate")), reason="accelerate CLI not installed")
def test_two_processes_match_one(tmp_path):
    glue_dir = write_sst2(tmp_path / "glue")
    model_dir = write_tiny_model(tmp_path / "tiny", dropout=0.0)  # no dropout: ranks see no RNG difference
    # The in-epoch head re-fit samples every token (its share a process is half of it), and sums the
    # processes' moments before a fit: the same fits as one process.
    refit = ["attention.compensate=lstsq", "heads.source=attention", "attention.compensate_tokens=100000"]
    common = ["--model", str(model_dir), "--glue-dir", str(glue_dir), *RUN, *refit]
    one, two = tmp_path / "one", tmp_path / "two"
    # Global batch 8 in both runs: one process takes all 8 rows of a batch, each of two takes 4.
    subprocess.run([sys.executable, "-m", "trimformer", "run", "--output-dir", str(one), "--train-batch-size", "8",
                    *common], env=env(), check=True, capture_output=True, timeout=300)
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    # `--multi_gpu` picks accelerate's torchrun launcher; with no GPU the processes run on the CPU (gloo).
    done = subprocess.run([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "trimformer", "run",
                           "--output-dir", str(two), "--train-batch-size", "8", *common],
                          env=env(), capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    log = (two / "run.log").read_text()
    assert "2 ranks agree on the attention masks" in log  # every rank held the same masks
    assert re.search(r"attention: [1-9]\d* output projection re-fits", log)
    assert "2 ranks agree on the weights after final_distil" in log
    assert log.count("stage finetune done") == 1  # one writer: the main process
    assert len(list(two.rglob("report.json"))) == 1
    a = load_file(str(one / "stages" / "attention" / "masks.safetensors"))
    b = load_file(str(two / "stages" / "attention" / "masks.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    ra, rb = (json.loads((d / "report.json").read_text()) for d in (one, two))
    assert ra["heads_per_layer"] == rb["heads_per_layer"] and ra["ffn_per_layer"] == rb["ffn_per_layer"]
    assert rb["pruned_metrics"]["accuracy"] == pytest.approx(ra["pruned_metrics"]["accuracy"], abs=1e-6)
    wa, wb = (load_file(str(d / "model" / "model.safetensors")) for d in (one, two))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-4, rtol=1e-3)


@pytest.mark.skipif(shutil.which("accelerate") is None and not os.path.exists(
    os.path.join(os.path.dirname(sys.executable), "accelerate")), reason="accelerate CLI not installed")
def test_a_target_refused_on_the_main_process_ends_every_rank(tmp_path):
    """Only the main process times shapes; when it refuses the target, the other rank must stop too
    (not wait at a barrier for a choice that never comes): both print the error, neither hangs."""
    glue_dir = write_sst2(tmp_path / "glue")
    model_dir = write_tiny_model(tmp_path / "tiny")
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    done = subprocess.run([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "trimformer", "run",
                           "--output-dir", str(tmp_path / "out"), "--train-batch-size", "8", "--model",
                           str(model_dir), "--glue-dir", str(glue_dir), *RUN, "--target-speedup", "1000"],
                          env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "trimformer: error: target speedup x1000 is out of reach timed on cpu" in done.stderr
    assert "trimformer: error: the main process found the target speedup out of reach" in done.stderr
    assert not (tmp_path / "out" / "target.json").exists()
