"""Kill a real run (SIGKILL) in the middle of a stage, resume it, and get the same result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from tests.pipeline_fixtures import TINY_OVERRIDES, write_sst2, write_tiny_model

RESUME_OVERRIDES = [*TINY_OVERRIDES, "attention.max_steps=240", "checkpoint_every=5"]


def command(model_dir: Path, glue_dir: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "trimformer", "run", "--model", str(model_dir), "--task", "sst2",
            "--glue-dir", str(glue_dir), "--recipe", "smoke", "--output-dir", str(out), *extra, *RESUME_OVERRIDES]


def env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def test_sigkill_mid_stage_then_resume_matches_uninterrupted(tmp_path):
    glue_dir = write_sst2(tmp_path / "glue")
    model_dir = write_tiny_model(tmp_path / "tiny")
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(command(model_dir, glue_dir, straight), env=env(), check=True, capture_output=True, timeout=300)

    proc = subprocess.Popen(command(model_dir, glue_dir, killed), env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    stage = killed / "stages" / "attention"
    deadline = time.time() + 240
    # Wait until the attention stage has written a mid-stage checkpoint past its first one.
    while time.time() < deadline and proc.poll() is None:
        meta = stage / "checkpoint" / "meta.json"
        try:
            if meta.is_file() and json.loads(meta.read_text())["step"] >= 60:
                break
        except (json.JSONDecodeError, KeyError, OSError):
            pass
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (stage / "done.json").exists(), "the kill came after the stage finished; lengthen the stage"
    assert (killed / "stages" / "finetune" / "done.json").exists()

    subprocess.run(command(model_dir, glue_dir, killed, "--resume"), env=env(), check=True, capture_output=True,
                   timeout=300)

    log = (killed / "run.log").read_text()
    assert "attention: resuming from the checkpoint at step" in log  # not a restart from step 0
    a = load_file(str(straight / "stages" / "attention" / "masks.safetensors"))
    b = load_file(str(killed / "stages" / "attention" / "masks.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    wa = load_file(str(straight / "model" / "model.safetensors"))
    wb = load_file(str(killed / "model" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    ra = json.loads((straight / "report.json").read_text())
    rb = json.loads((killed / "report.json").read_text())
    assert ra["pruned_metrics"] == rb["pruned_metrics"] and ra["heads_per_layer"] == rb["heads_per_layer"]
