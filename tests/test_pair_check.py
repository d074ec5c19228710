"""bench/pair_check.py: its oracle threshold and paired comparison mean what its report says."""

from __future__ import annotations

import numpy as np

from tests.bench_scripts import load_bench
from trimformer.glue import get_task

check = load_bench("pair_check")


def test_best_threshold_finds_the_separating_cut_that_argmax_misses():
    spec = get_task("cola")  # main metric: Matthews correlation
    labels = np.array([0] * 20 + [1] * 20)
    # every margin positive (argmax says class 1 for all: MCC 0), but the ranking is perfect
    margins = np.concatenate([np.linspace(1, 2, 20), np.linspace(3, 4, 20)])
    logits = np.stack([np.zeros(40), margins], axis=1)
    assert check.best_threshold_metric(spec, logits, labels) == 1.0


def test_compare_is_b_minus_a_and_positive_when_b_is_better():
    a = {"metric": 0.50, "loss": np.array([1.0, 1.2, 0.8, 1.0]), "kd": np.array([0.4, 0.5, 0.6, 0.5])}
    b = {"metric": 0.53, "loss": np.array([0.9, 1.0, 0.7, 0.9]), "kd": np.array([0.5, 0.7, 0.7, 0.55])}
    row = check.compare(a, b)
    assert row["metric_gain"] == 3.0
    assert row["loss_rel_gain"] > 0 and row["loss_z"] > 0  # B's loss lower on every example
    assert row["kd_rel_gain"] < 0 and row["kd_z"] < 0  # B further from the teacher
