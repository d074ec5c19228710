"""The training loop: evaluation cadence and best-weight keeping."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from tests.models import tiny_bert
from trimformer.checkpoint import CheckpointError, load_checkpoint
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


def test_hidden_state_distillation_pulls_the_student_towards_the_teacher():
    from trimformer.distill import hidden_loss

    teacher = tiny_bert(seed=1).eval().requires_grad_(False)
    batch = collate(make_set(8))
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}

    def gap(model) -> float:
        with torch.no_grad():
            student = model(**inputs, output_hidden_states=True).hidden_states
            return float(hidden_loss(student, teacher(**inputs, output_hidden_states=True).hidden_states,
                                     batch["attention_mask"]))

    gaps = {}
    for weight in (0.0, 5.0):
        model = tiny_bert(seed=0)
        fit(model, get_task("sst2"), make_set(), collate, TrainSettings(max_steps=12, batch_size=8, lr=1e-3,
                                                                        hidden_weight=weight), teacher=teacher)
        gaps[weight] = gap(model)
    assert gaps[5.0] < 0.8 * gaps[0.0]  # 2.05 -> 1.38 when written


def test_hidden_loss_is_zero_for_identical_states_and_ignores_padding():
    from trimformer.distill import hidden_loss

    states = tuple(torch.randn(2, 4, 8) for _ in range(3))
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    assert float(hidden_loss(states, states, mask)) == 0.0
    padded = tuple(s.clone() for s in states)
    for s in padded:
        s[0, 3] += 100.0  # a padded position
    assert float(hidden_loss(padded, states, mask)) == 0.0
    moved = tuple(s + 1.0 for s in states)
    assert float(hidden_loss(moved, states, mask)) == 1.0


def test_tail_average_ends_on_the_mean_of_the_last_steps_weights():
    model = tiny_bert(seed=0)
    seen = []

    def record(optimizer):  # the weights after every step, in order
        optimizer.register_step_post_hook(lambda *_: seen.append(
            {k: v.detach().clone() for k, v in model.named_parameters()}))

    fit(model, get_task("sst2"), make_set(), collate, TrainSettings(max_steps=12, batch_size=4, lr=1e-2,
                                                                    average=0.25), on_optimizer=record)
    assert len(seen) == 12
    for name, param in model.named_parameters():
        expected = torch.stack([weights[name] for weights in seen[-3:]]).mean(0)
        assert torch.allclose(param, expected, atol=1e-6), name
    assert not torch.allclose(seen[-1]["classifier.weight"], seen[-3]["classifier.weight"])  # it moved


def test_tail_average_survives_a_resume(tmp_path):
    settings = TrainSettings(max_steps=12, batch_size=4, lr=1e-2, average=0.75, checkpoint_every=3)
    whole = tiny_bert(seed=0)
    fit(whole, get_task("sst2"), make_set(), collate, settings)

    class Stop(Exception):
        pass

    def stop_at_step_8(optimizer):
        calls = []

        def hook(*_):
            calls.append(1)
            if len(calls) == 8:
                raise Stop

        optimizer.register_step_post_hook(hook)

    broken = tiny_bert(seed=0)
    try:
        fit(broken, get_task("sst2"), make_set(), collate, settings, checkpoint_dir=tmp_path / "ckpt",
            on_optimizer=stop_at_step_8)
    except Stop:
        pass
    saved = load_checkpoint(tmp_path / "ckpt", model=tiny_bert(seed=0), restore_rng=False)
    assert saved.step == 6 and saved.extra_meta["average_first"] == 4  # inside the window: steps 4-12
    assert {k for k in saved.extra_tensors if k.startswith("avg.")}
    with pytest.raises(CheckpointError, match="averages from step 2"):  # `average` changed since
        fit(tiny_bert(seed=0), get_task("sst2"), make_set(), collate, replace(settings, average=0.9),
            checkpoint_dir=tmp_path / "ckpt")
    resumed = tiny_bert(seed=0)
    fit(resumed, get_task("sst2"), make_set(), collate, settings, checkpoint_dir=tmp_path / "ckpt")
    for (name, a), b in zip(whole.named_parameters(), resumed.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name


def test_tail_average_is_kept_over_an_evaluations_best_weights():
    """With `keep_best`, an evaluation's raw weights do not replace the average the stage ends on."""
    model = tiny_bert(seed=0)
    scores = iter([1.0, 0.1, 0.1])  # the first evaluation (step 4) would be the best
    settings = TrainSettings(max_steps=12, batch_size=4, lr=1e-2, average=0.25, keep_best=True, eval_every=4)
    seen = []
    fit(model, get_task("sst2"), make_set(), collate, settings, evaluate_fn=lambda m: {"accuracy": next(scores, 0.1)},
        on_optimizer=lambda opt: opt.register_step_post_hook(lambda *_: seen.append(
            {k: v.detach().clone() for k, v in model.named_parameters()})))
    expected = torch.stack([weights["classifier.weight"] for weights in seen[-3:]]).mean(0)
    assert torch.allclose(model.classifier.weight, expected, atol=1e-6)


def test_the_lr_restarts_at_restart_step_and_decays_to_zero_by_the_end():
    lrs = []
    settings = TrainSettings(max_steps=8, batch_size=4, lr=1e-3, restart_step=6, restart_lr=2e-3)
    fit(tiny_bert(), get_task("sst2"), make_set(), collate, settings,
        on_optimizer=lambda opt: opt.register_step_pre_hook(lambda o, *_: lrs.append(o.param_groups[0]["lr"])))
    assert lrs[:6] == pytest.approx([1e-3 * (8 - s) / 8 for s in range(6)])  # the one decay until step 6
    assert lrs[6:] == pytest.approx([2e-3, 1e-3])  # then from restart_lr to zero over the last 2 steps


def test_a_restart_needs_its_lr_and_overrides_the_warm_up_from_its_step():
    with pytest.raises(ValueError, match="restart_step and restart_lr go together"):
        TrainSettings(restart_step=6)
    lrs = []
    settings = TrainSettings(max_steps=8, batch_size=4, lr=1e-3, warmup_ratio=0.25, restart_step=6, restart_lr=1e-3)
    fit(tiny_bert(), get_task("sst2"), make_set(), collate, settings,
        on_optimizer=lambda opt: opt.register_step_pre_hook(lambda o, *_: lrs.append(o.param_groups[0]["lr"])))
    assert lrs[:2] == pytest.approx([0.5e-3, 1e-3]) and lrs[6:] == pytest.approx([1e-3, 0.5e-3])
