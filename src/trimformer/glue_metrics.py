"""GLUE metrics from raw model outputs (scikit-learn / scipy), and the MNLI matched/mismatched merge.

Values are fractions in [0, 1] (correlations in [-1, 1]), never percents.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef

if TYPE_CHECKING:
    from trimformer.glue import TaskSpec

_F1_TASKS = frozenset({"mrpc", "qqp"})


def _spec(task: TaskSpec | str) -> TaskSpec:
    if isinstance(task, str):
        # Imported here because trimformer.glue imports this module (it re-exports the metrics).
        from trimformer.glue import get_task

        return get_task(task)
    return task


def _correlation(fn: Callable, predictions: np.ndarray, labels: np.ndarray) -> float:
    # Constant predictions (an untrained regressor) make the correlation undefined; scipy returns nan
    # with a warning. Report 0.0 so "best checkpoint" comparisons keep working.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = float(fn(predictions, labels)[0])
    return 0.0 if math.isnan(value) else value


def compute_metrics(task: TaskSpec | str, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """GLUE metrics for one split from raw logits ([N, num_labels]; [N, 1] or [N] for STS-B).

    Classification logits are arg-maxed (a 1-D integer array is taken as class ids already);
    cola: matthews_correlation + accuracy; mrpc/qqp: f1 + accuracy; stsb: pearson + spearmanr;
    the others: accuracy.
    """
    spec = _spec(task)
    preds = np.asarray(predictions)
    gold = np.asarray(labels).reshape(-1)
    if spec.is_regression:
        if preds.ndim == 2 and preds.shape[1] == 1:
            preds = preds[:, 0]
        if preds.ndim != 1:
            raise ValueError(f"{spec.name}: regression predictions must be [N] or [N, 1], got {preds.shape}")
    else:
        if preds.ndim == 2:
            preds = preds.argmax(axis=-1)
        elif preds.ndim != 1:
            raise ValueError(f"{spec.name}: predictions must be logits [N, C] or class ids [N], "
                             f"got {preds.shape}")
    if len(preds) != len(gold) or len(gold) == 0:
        raise ValueError(f"{spec.name}: {len(preds)} predictions for {len(gold)} labels (need the same, > 0)")

    if spec.is_regression:
        preds, gold = preds.astype(np.float64), gold.astype(np.float64)
        return {"pearson": _correlation(pearsonr, preds, gold),
                "spearmanr": _correlation(spearmanr, preds, gold)}

    preds, gold = preds.astype(np.int64), gold.astype(np.int64)
    out = {"accuracy": float((preds == gold).mean())}
    if spec.name == "cola":
        out["matthews_correlation"] = float(matthews_corrcoef(gold, preds))
    if spec.name in _F1_TASKS:
        out["f1"] = float(f1_score(gold, preds, zero_division=0.0))
    return out


def combine_splits(task: TaskSpec | str, per_split: dict[str, dict[str, float]]) -> dict[str, float]:
    """Merge per-dev-split metrics into one dict holding the task's `main_metric`.

    One dev split: its dict, unchanged. MNLI: ``matched_<metric>`` / ``mismatched_<metric>``, plus
    ``default`` and ``accuracy`` = mean of the two accuracies.
    """
    spec = _spec(task)
    if set(per_split) != set(spec.dev_splits):
        raise ValueError(f"{spec.name}: expected metrics for dev splits {list(spec.dev_splits)}, "
                         f"got {sorted(per_split)}")
    if len(spec.dev_splits) == 1:
        return dict(per_split[spec.dev_splits[0]])
    out: dict[str, float] = {}
    for split in spec.dev_splits:
        prefix = split.removeprefix("dev_")
        out.update({f"{prefix}_{key}": value for key, value in per_split[split].items()})
    mean = float(np.mean([per_split[split]["accuracy"] for split in spec.dev_splits]))
    out["accuracy"] = mean
    out["default"] = mean
    return out
