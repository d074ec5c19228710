"""Checkpoints chosen on training rows set aside (`select_rows`), never on the dev set they report."""

from __future__ import annotations

import json

import pytest
import torch

from tests.models import tiny_bert
from tests.pipeline_fixtures import TINY_OVERRIDES, write_sst2, write_stsb, write_tiny_model
from tests.test_train import collate, make_set
from trimformer.cli import main
from trimformer.glue import GlueDataError, get_task
from trimformer.holdout import rows_to_read, split_holdout
from trimformer.train import TrainSettings, fit


def test_the_holdout_is_a_fixed_random_draw_disjoint_from_the_training_rows():
    rows = list(range(100))
    torch.manual_seed(1)
    train, held = split_holdout(rows, 10)
    assert len(held) == 10 and len(train) == 90 and sorted(train + held) == rows
    assert train == sorted(train) and held == sorted(held)  # file order kept on both sides
    torch.manual_seed(2)
    assert split_holdout(rows, 10) == (train, held)  # the same rows whatever the run's seed
    assert held != list(range(90, 100))  # not the file's tail (CoLA's files are grouped by source)


def test_rows_beyond_the_cap_give_the_holdout_and_the_training_rows_stay_as_without_one():
    assert rows_to_read(60, 10) is None and rows_to_read(60, 0) == 60
    rows = list(range(200))
    train, held = split_holdout(rows, 10, max_train_samples=60)
    assert train == list(range(60)) == split_holdout(rows, 0, max_train_samples=60)[0]
    assert len(held) == 10 and min(held) >= 60 and held != list(range(60, 70))  # a draw, not the next rows


def test_a_holdout_out_of_the_training_rows_takes_at_most_a_tenth_of_the_file(caplog):
    train, held = split_holdout(list(range(50)), 20, max_train_samples=48)
    assert len(held) == 5 and len(train) == 45 and "5 set aside, a tenth of the train file's 50 rows" in caplog.text
    with pytest.raises(GlueDataError, match="select_rows=5: the train file's 15 rows leave fewer than 2"):
        split_holdout(list(range(15)), 5)


def test_fit_keeps_the_weights_the_selection_metric_prefers_and_reports_the_evaluation():
    model = tiny_bert()
    looks, snapshots = [], {}

    def select_fn(m):
        looks.append(len(looks) + 1)
        snapshots[len(looks)] = {k: v.clone() for k, v in m.state_dict().items()}
        return {"accuracy": 1.0 if len(looks) == 2 else 0.1}  # the holdout prefers the 2nd look

    evaluations = []

    def evaluate_fn(m):
        evaluations.append(1)
        return {"accuracy": 0.5}

    settings = TrainSettings(epochs=1, batch_size=4, lr=1e-3, keep_best=True, eval_every=2)
    result = fit(model, get_task("sst2"), make_set(), collate, settings, evaluate_fn=evaluate_fn, select_fn=select_fn)
    assert looks == [1, 2, 3] and len(evaluations) == 1  # dev measured once, on the weights kept
    assert result.best_metric == 1.0 and result.metrics == {"accuracy": 0.5}
    assert all(torch.equal(v, snapshots[2][k]) for k, v in model.state_dict().items())


def run_cmd(tmp_path, task: str = "sst2", train_rows: int = 100) -> list[str]:
    write = write_stsb if task == "stsb" else write_sst2
    glue_dir = write(tmp_path / "glue", train_rows=train_rows)
    return ["run", "--model", str(write_tiny_model(tmp_path / "tiny")), "--task", task, "--glue-dir", str(glue_dir),
            "--recipe", "smoke", "--output-dir", str(tmp_path / "out"), *TINY_OVERRIDES]


def test_a_run_chooses_on_the_rows_set_aside_and_trains_on_the_rest(tmp_path, monkeypatch):
    import trimformer.pipeline as pipeline

    chosen_on = []
    real_predict = pipeline.predict
    monkeypatch.setattr(pipeline, "predict", lambda model, data, *a, **k: (chosen_on.append(len(data)),
                                                                           real_predict(model, data, *a, **k))[1])
    out = tmp_path / "out"
    code = main([*run_cmd(tmp_path), "select_rows=8", "finetune.eval_every=2", "distil.eval_every=2",
                 "final_distil.eval_every=2"])
    assert code == 0
    # finetune 6 steps, distil and final distil 4 each, a look every 2 steps (and at epoch ends): every look
    # at the holdout, none at dev
    assert len(chosen_on) >= 3 + 2 + 2 and set(chosen_on) == {8}
    from trimformer.distill import load_teacher_logits

    assert len(load_teacher_logits(out / "teacher_logits.safetensors")) == 64  # smoke's max_train_samples
    report = json.loads((out / "report.json").read_text())
    assert report["extra"]["chosen_on"] == "holdout" and report["extra"]["holdout_rows"] == 8
    assert "8 training rows set aside to choose the best weights on (select_rows); 64 trained on" in (
        out / "run.log").read_text()


def test_a_regression_task_chooses_on_its_holdout_too(tmp_path):
    out = tmp_path / "out"
    assert main([*run_cmd(tmp_path, "stsb"), "select_rows=8", "finetune.eval_every=2", "--stop-after", "finetune"]) == 0
    assert json.loads((out / "data.json").read_text())["holdout_rows"] == 8


def test_a_holdout_too_big_for_the_train_file_exits_2(tmp_path, capsys):
    assert main([*run_cmd(tmp_path, train_rows=12), "select_rows=12"]) == 2
    assert "select_rows=12: the train file's 12 rows leave fewer than 2" in capsys.readouterr().err
    assert not (tmp_path / "out" / "stages").exists()


def test_a_resume_on_other_rows_exits_2_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "out"
    cmd = [*run_cmd(tmp_path), "--stop-after", "finetune"]
    assert main([*cmd, "select_rows=8"]) == 0
    recorded = json.loads((out / "data.json").read_text())
    assert recorded["train_rows"] == 64 and recorded["holdout_rows"] == 8
    assert main([*cmd, "select_rows=8", "--resume"]) == 0  # the same rows: resumes
    recipe_before = (out / "recipe.json").read_text()
    assert main([*cmd, "select_rows=8", "max_train_samples=60", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "began training on 64 rows with 8 set aside; this resume has 60 and 8" in err
    assert (out / "recipe.json").read_text() == recipe_before  # nothing of the refused resume written
    assert json.loads((out / "data.json").read_text()) == recorded
    (out / "data.json").write_text("{not json")
    assert main([*cmd, "select_rows=8", "--resume"]) == 2
    assert "data.json: not a trimformer data record" in capsys.readouterr().err


def test_a_run_begun_before_data_json_resumes_only_on_its_own_rows(tmp_path, capsys):
    out = tmp_path / "out"
    cmd = [*run_cmd(tmp_path), "--stop-after", "finetune"]
    assert main(cmd) == 0  # smoke: select_rows 0
    (out / "data.json").unlink()  # as a run made before data.json was
    assert main([*cmd, "select_rows=8", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "began with select_rows=0 max_train_samples=64, before data.json recorded its rows" in err
    assert not (out / "data.json").exists()
    assert main([*cmd, "--resume"]) == 0 and json.loads((out / "data.json").read_text())["train_rows"] == 64
