"""Checkpoints chosen on training rows set aside (`select_rows`), never on the dev set they report."""

from __future__ import annotations

import json

import pytest
import torch

from tests.models import tiny_bert
from tests.pipeline_fixtures import TINY_OVERRIDES, write_sst2, write_tiny_model
from tests.test_train import collate, make_set
from trimformer.cli import main
from trimformer.glue import GlueDataError, get_task
from trimformer.holdout import rows_to_read, split_holdout
from trimformer.train import TrainSettings, fit


def test_the_holdout_is_a_fixed_random_draw_disjoint_from_the_training_rows():
    rows = list(range(100))
    train, held = split_holdout(rows, 10)
    assert len(held) == 10 and len(train) == 90 and sorted(train + held) == rows
    assert train == sorted(train) and held == sorted(held)  # file order kept on both sides
    assert split_holdout(rows, 10) == (train, held)  # the same rows whatever the run's seed
    assert held != list(range(90, 100))  # not the file's tail (CoLA's files are grouped by source)


def test_the_training_rows_keep_their_cap_and_the_holdout_can_come_from_beyond_it():
    assert rows_to_read(60, 10) == 70 and rows_to_read(None, 10) is None
    train, held = split_holdout(list(range(70)), 10, max_train_samples=60)
    assert len(train) == 60 and len(held) == 10 and not set(train) & set(held)
    assert split_holdout(list(range(70)), 0, max_train_samples=60) == (list(range(60)), [])


def test_a_holdout_as_big_as_the_file_is_refused():
    with pytest.raises(GlueDataError, match="select_rows=5 holds out every training row"):
        split_holdout(list(range(5)), 5)


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


def test_a_run_chooses_on_the_rows_set_aside_and_trains_on_the_rest(tmp_path, monkeypatch):
    import trimformer.pipeline as pipeline

    glue_dir = write_sst2(tmp_path / "glue", train_rows=48)
    model_dir = write_tiny_model(tmp_path / "tiny")
    chosen_on = []
    real_predict = pipeline.predict
    monkeypatch.setattr(pipeline, "predict", lambda model, data, *a, **k: (chosen_on.append(len(data)),
                                                                           real_predict(model, data, *a, **k))[1])
    out = tmp_path / "out"
    code = main(["run", "--model", str(model_dir), "--task", "sst2", "--glue-dir", str(glue_dir), "--recipe",
                 "smoke", "--output-dir", str(out), *TINY_OVERRIDES, "select_rows=8", "finetune.eval_every=2",
                 "distil.eval_every=2", "final_distil.eval_every=2"])
    assert code == 0
    # finetune 6 steps, distil and final distil 4 each, a look every 2 steps (and at epoch ends): every look
    # at the holdout, none at dev
    assert len(chosen_on) >= 3 + 2 + 2 and set(chosen_on) == {8}
    from trimformer.distill import load_teacher_logits

    assert len(load_teacher_logits(out / "teacher_logits.safetensors")) == 40  # 48 rows less the 8 set aside
    report = json.loads((out / "report.json").read_text())
    assert report["extra"]["best_weights_chosen_on"] == "8 training rows set aside"
    assert "8 training rows set aside to choose the best weights on (select_rows); 40 trained on" in (
        out / "run.log").read_text()


def test_a_holdout_larger_than_the_train_file_exits_2(tmp_path, capsys):
    glue_dir = write_sst2(tmp_path / "glue", train_rows=12)
    code = main(["run", "--model", str(write_tiny_model(tmp_path / "tiny")), "--task", "sst2", "--glue-dir",
                 str(glue_dir), "--recipe", "smoke", "--output-dir", str(tmp_path / "out"), "select_rows=12"])
    assert code == 2
    assert "select_rows=12 holds out every training row: the train file has 12" in capsys.readouterr().err
    assert not (tmp_path / "out" / "stages").exists()


def test_a_resume_on_other_rows_exits_2_before_training(tmp_path, capsys):
    glue_dir = write_sst2(tmp_path / "glue", train_rows=48)
    out = tmp_path / "out"
    cmd = ["run", "--model", str(write_tiny_model(tmp_path / "tiny")), "--task", "sst2", "--glue-dir", str(glue_dir),
           "--recipe", "smoke", "--output-dir", str(out), *TINY_OVERRIDES, "--stop-after", "finetune"]
    assert main([*cmd, "select_rows=8"]) == 0
    recorded = json.loads((out / "data.json").read_text())
    assert recorded["train_rows"] == 40 and recorded["holdout_rows"] == 8
    assert main([*cmd, "select_rows=8", "--resume", "seed=7"]) == 0  # another seed, the same rows
    recipe_before = (out / "recipe.json").read_text()
    # the same number of training rows, other ones: 48 read, 8 set aside -> 40; 40 read, none set aside -> 40
    assert main([*cmd, "select_rows=0", "max_train_samples=40", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "began on other rows (40 trained on, 8 set aside) than these (40 and 0" in err
    assert (out / "recipe.json").read_text() == recipe_before  # nothing of the refused resume written
    assert json.loads((out / "data.json").read_text()) == recorded
