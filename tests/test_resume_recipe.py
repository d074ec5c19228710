"""A resume may change the settings of stages not begun, never those of a stage begun or done."""

from __future__ import annotations

import json

from tests.pipeline_fixtures import TINY_OVERRIDES, write_sst2, write_tiny_model
from trimformer.cli import main
from trimformer.resume import changed_settings


def test_only_the_begun_stages_and_the_shared_keys_count():
    began = {"seed": 1, "max_seq_length": 64, "finetune": {"epochs": 3, "lr": 3e-5}, "ffn": {"epochs": 1}}
    now = {"seed": 2, "max_seq_length": 64, "finetune": {"epochs": 3, "lr": 5e-5}, "ffn": {"epochs": 2},
           "attention": {"recover_lr": 3e-5}}
    assert changed_settings(began, now, ["finetune"]) == ["seed", "finetune.lr"]
    assert changed_settings(began, now, []) == []  # nothing begun: anything may change
    # a key the run's recipe.json predates (added to the recipe since) is not a change
    assert changed_settings({"finetune": {"epochs": 3}}, {"finetune": {"epochs": 3, "average": 0.0}},
                            ["finetune"]) == []


def test_a_resume_with_other_settings_for_a_begun_stage_exits_2(tmp_path, capsys):
    out = tmp_path / "out"
    cmd = ["run", "--model", str(write_tiny_model(tmp_path / "tiny")), "--task", "sst2", "--glue-dir",
           str(write_sst2(tmp_path / "glue")), "--recipe", "smoke", "--output-dir", str(out), *TINY_OVERRIDES,
           "--stop-after", "finetune"]
    assert main(cmd) == 0
    recipe_before = json.loads((out / "recipe.json").read_text())
    assert main([*cmd, "--resume", "finetune.lr=7e-5", "seed=7"]) == 2
    err = capsys.readouterr().err
    assert "began its finetune stage(s) with other settings than this resume gives for seed, finetune.lr" in err
    assert json.loads((out / "recipe.json").read_text()) == recipe_before
    assert main([*cmd, "--resume", "ffn.epochs=2"]) == 0  # a stage not begun may change
    assert json.loads((out / "recipe.json").read_text())["ffn"]["epochs"] == 2
