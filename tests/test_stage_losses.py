"""bench/stage_losses.py: each stage's mean change of the main metric over a method's seeds."""

from __future__ import annotations

import json

import pytest

from tests.bench_scripts import load_bench

losses = load_bench("stage_losses")


def write_point(work, task, name, values, metric="matthews_correlation"):
    for stage, value in zip(losses.STAGES, values, strict=False):  # fewer values: an unfinished point
        folder = work / task / name / "stages" / stage
        folder.mkdir(parents=True)
        (folder / "done.json").write_text(json.dumps({"metrics": {metric: value}}))


def test_stage_changes_are_means_over_the_seeds_of_one_method_and_target(tmp_path):
    write_point(tmp_path, "cola", "taylor_reg-3", [0.30, 0.20, 0.20, 0.22, 0.24])
    write_point(tmp_path, "cola", "taylor_reg_s1025-3", [0.30, 0.24, 0.24, 0.24, 0.20])
    write_point(tmp_path, "cola", "taylor_reg-5", [0.30, 0.10, 0.10, 0.10, 0.10])
    write_point(tmp_path, "cola", "taylor_avg-3", [0.30, 0.0, 0.0, 0.0, 0.0])  # another method: not counted
    write_point(tmp_path, "cola", "taylor_reg_s1026-3", [0.30, 0.25, 0.25])  # unfinished: not counted
    write_point(tmp_path, "cola", "taylor_reg_s1025-3+branch", [0.30, 0.0, 0.0, 0.0, 0.0])  # a branch
    write_point(tmp_path, "cola", "taylor_rega-3", [0.30, 0.0, 0.0, 0.0, 0.0])  # another method's name
    rows = {row["target"]: row for row in losses.stage_losses([tmp_path], "taylor_reg")}
    assert sorted(rows) == [3.0, 5.0] and rows[3.0]["seeds"] == 2
    assert rows[3.0]["attention"] == pytest.approx(-8.0) and rows[3.0]["heads"] == pytest.approx(0.0)
    assert rows[3.0]["distil"] == pytest.approx(1.0) and rows[3.0]["ffn"] == pytest.approx(-1.0)
    assert rows[3.0]["drop"] == pytest.approx(8.0) and rows[5.0]["drop"] == pytest.approx(20.0)


def test_a_point_found_in_two_work_folders_is_refused(tmp_path):
    for work in ("a", "b"):
        write_point(tmp_path / work, "cola", "taylor_reg-3", [0.30, 0.20, 0.20, 0.22, 0.24])
    with pytest.raises(SystemExit, match="the same point in two work folders"):
        losses.stage_losses([tmp_path / "a", tmp_path / "b"], "taylor_reg")
