"""The training loop: evaluation cadence and best-weight keeping."""

from __future__ import annotations

import torch

from tests.models import tiny_bert
from trimformer.glue import get_task
from trimformer.train import TrainSettings, fit


def make_set(n: int = 24):
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(5, 99, (8,), generator=g).tolist(), "attention_mask": [1] * 8,
             "labels": i % 2} for i in range(n)]


def collate(rows):
    return {k: torch.tensor([r[k] for r in rows]) for k in rows[0]}


def test_eval_every_and_best_weights_are_kept():
    model = tiny_bert()
    calls, snapshots = [], {}

    def evaluate_fn(m):
        step = len(calls) + 1
        calls.append(step)
        snapshots[step] = {k: v.clone() for k, v in m.state_dict().items()}
        return {"accuracy": 1.0 if step == 2 else 0.1 * step}  # the 2nd evaluation is the best

    settings = TrainSettings(epochs=2, batch_size=4, lr=1e-3, keep_best=True, eval_every=2)
    result = fit(model, get_task("sst2"), make_set(), collate, settings, evaluate_fn=evaluate_fn)
    assert result.steps == 12
    assert len(calls) == 6 + 1  # steps 2, 4, ..., 12 (epoch ends 6 and 12 included once), then a final one
    assert result.best_metric == 1.0
    best = snapshots[2]
    assert all(torch.equal(v, best[k]) for k, v in model.state_dict().items())
