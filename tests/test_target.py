"""Latency-target shape choice: shapes are exact; the solver finds the target on a known curve."""

from __future__ import annotations

import pytest

import trimformer.target as target_mod
from tests.models import tiny_bert
from trimformer.bench import LatencyComparison, LatencyStats, count_params, layer_widths
from trimformer.target import choose_shape, shape_of, shaped_copy


def test_shape_of_and_shaped_copy():
    model = tiny_bert(heads=4, ffn=64)
    assert shape_of(model, 0.5) == (2, 32)
    assert shape_of(model, 0.01) == (1, 1)
    assert shape_of(model, 0.5, ffn_multiple=24) == (2, 24)
    clone = shaped_copy(model, 2, 32)
    assert list(layer_widths(clone)) == [[2, 2], [32, 32]]
    assert count_params(clone) < count_params(model) and list(layer_widths(model)) == [[4, 4], [64, 64]]


@pytest.mark.parametrize("target", [2.0, 3.0])
def test_solver_reaches_the_target_on_an_affine_latency_curve(monkeypatch, target):
    model = tiny_bert(heads=12, hidden=48, ffn=1200)

    def fake_compare(reference, candidate, *args, **kwargs):
        # latency = 0.1 fixed + 0.9 * kept fraction of FFN (what the module docstring assumes)
        keep = layer_widths(candidate)[1][0] / 1200
        ref, cand = 1.0, 0.1 + 0.9 * keep
        stats = lambda t: LatencyStats(t, t, t, 1)  # noqa: E731
        return LatencyComparison(stats(ref), stats(cand), ref / cand)

    monkeypatch.setattr(target_mod, "compare_latency", fake_compare)
    choice = choose_shape(model, target)
    assert choice.measured_speedup == pytest.approx(target, rel=0.01)
    assert choice.heads == round(12 * choice.ffn / 1200)


def test_target_must_be_above_one():
    with pytest.raises(ValueError, match="above 1"):
        choose_shape(tiny_bert(), 1.0)
