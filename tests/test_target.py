"""Latency-target shape choice: shapes are exact; the solver finds the target on a known curve."""

from __future__ import annotations

import pytest

import trimformer.target as target_mod
from tests.models import affine_timing, tiny_bert
from trimformer.bench import LatencyComparison, LatencyStats, count_params, layer_widths
from trimformer.structure import model_structure
from trimformer.target import (
    TargetOutOfReach,
    choose_shape,
    flops_fraction,
    shape_for_fraction,
    shape_of,
    shape_on_line,
    shaped_copy,
)


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
    monkeypatch.setattr(target_mod, "compare_latency", affine_timing(fixed=0.1))
    choice = choose_shape(model, target)
    assert choice.measured_speedup == pytest.approx(target, rel=0.02)
    assert len(choice.calibration) >= 4


def test_a_target_beyond_the_smallest_shape_is_refused(monkeypatch):
    """As an H100 timed MiniLM at batch 32: 70% of the dense time is work that cutting heads and FFN
    channels leaves (x1.4 at most), so x3 is refused, not met by cutting every layer to the bone."""
    model = tiny_bert(heads=12, hidden=48, ffn=1200)
    monkeypatch.setattr(target_mod, "compare_latency", affine_timing(fixed=0.7))
    with pytest.raises(TargetOutOfReach, match=r"x3 is out of reach timed on cuda, bf16, compiled at batch 32 x "
                                               r"128: the smallest shape \(1 head and 64 FFN channels a layer\) "
                                               r"measured x1\.39\. Ask for a lower target"):
        choose_shape(model, 3.0, ffn_multiple=64, device="cuda", bf16=True, compile=True)
    choice = choose_shape(model, 1.3, ffn_multiple=64)  # within reach on the same curve
    assert choice.measured_speedup == pytest.approx(1.3, rel=0.05)


def test_a_target_just_inside_reach_is_met_not_refused(monkeypatch):
    model = tiny_bert(heads=12, hidden=48, ffn=1200)
    monkeypatch.setattr(target_mod, "compare_latency", affine_timing(fixed=0.3))
    choice = choose_shape(model, 3.0)  # the smallest shape would give about x3.2
    assert choice.measured_speedup == pytest.approx(3.0, rel=0.05)


@pytest.mark.parametrize(("over", "refused"), [(1.05, False), (1.15, True)])
def test_a_target_up_to_ten_percent_past_the_smallest_shape_is_met_by_it(monkeypatch, over, refused):
    model = tiny_bert(heads=12, hidden=48, ffn=1200)
    st = model_structure(model)
    monkeypatch.setattr(target_mod, "compare_latency", affine_timing(fixed=0.5))
    fastest = 1.0 / (0.5 + 0.5 * flops_fraction(st, 1, 1, 128))  # the smallest shape, one head and one channel
    if refused:
        with pytest.raises(TargetOutOfReach):
            choose_shape(model, over * fastest)
    else:
        choice = choose_shape(model, over * fastest)
        assert (choice.heads, choice.ffn) == (1, 1) and choice.measured_speedup == pytest.approx(fastest)


def test_a_line_that_misses_is_checked_against_the_smallest_shape(monkeypatch):
    """Latency off the line (a band of slow widths, as odd GPU widths are): the solved shape lands in
    it, far short of the target; the smallest shape is fast enough, so the target stands and the
    smallest shape's timing joins the line the answer is solved on."""
    model = tiny_bert(heads=12, hidden=48, ffn=1200)
    st = model_structure(model)
    timed = []

    def banded(reference, candidate, *args, **kwargs):
        heads, ffn = (w[0] for w in layer_widths(candidate))
        fraction = flops_fraction(st, heads, ffn, 128)
        timed.append((heads, ffn))
        cand = 0.45 if 0.1 < fraction < 0.3 else 0.1 + 0.9 * fraction
        stats = lambda t: LatencyStats(t, t, t, 1)  # noqa: E731
        return LatencyComparison(stats(1.0), stats(cand), 1.0 / cand)

    monkeypatch.setattr(target_mod, "compare_latency", banded)
    choice = choose_shape(model, 3.0)
    smallest = shape_for_fraction(st, 0.0, 128)
    assert smallest in timed and flops_fraction(st, *smallest, 128) in [p[0] for p in choice.calibration]
    # Not the shape in the slow band (x2.2): the least-cut shape below it, past the target.
    assert choice.measured_speedup >= 0.9 * 3.0 and flops_fraction(st, choice.heads, choice.ffn, 128) > 0.05


def test_target_must_be_above_one():
    with pytest.raises(ValueError, match="above 1"):
        choose_shape(tiny_bert(), 1.0)


def test_shape_for_fraction_matches_the_flops_fraction():
    st = model_structure(tiny_bert(heads=12, hidden=48, ffn=1200))
    for fraction in (0.2, 0.33, 0.5, 0.8):
        heads, ffn = shape_for_fraction(st, fraction, 128)
        assert flops_fraction(st, heads, ffn, 128) == pytest.approx(fraction, abs=0.01)
    assert shape_for_fraction(st, 1.0, 128) == (12, 1200)
    assert shape_for_fraction(st, 0.5, 128, ffn_multiple=64)[1] % 64 == 0


def test_solver_follows_the_fitted_line_not_one_noisy_timing(monkeypatch):
    model = tiny_bert(heads=12, hidden=48, ffn=1200)
    st = model_structure(model)
    calls = []

    def noisy_compare(reference, candidate, *args, **kwargs):
        # The true curve as above; every timing after the first few is off by +-10% in turn, as a busy
        # 2-core machine gives. Picking the timing closest to the target would pick a wrong shape.
        heads, ffn = (w[0] for w in layer_widths(candidate))
        true = 1.0 / (0.1 + 0.9 * flops_fraction(st, heads, ffn, 128))
        calls.append(true)
        noise = 1.0 if len(calls) <= 3 else (1.1 if len(calls) % 2 else 0.9)
        stats = lambda t: LatencyStats(t, t, t, 1)  # noqa: E731
        return LatencyComparison(stats(1.0), stats(1.0 / (true * noise)), true * noise)

    monkeypatch.setattr(target_mod, "compare_latency", noisy_compare)
    choice = choose_shape(model, 2.0)
    true = 1.0 / (0.1 + 0.9 * flops_fraction(st, choice.heads, choice.ffn, 128))
    assert true == pytest.approx(2.0, rel=0.03)


def test_head_ratio_moves_the_budget_from_channels_to_heads():
    st = model_structure(tiny_bert(heads=12, hidden=48, ffn=1200))
    for fraction in (0.2, 0.33, 0.5):
        even = shape_for_fraction(st, fraction, 128)
        assert shape_for_fraction(st, fraction, 128, head_ratio=1.0) == even
        heads, ffn = shape_for_fraction(st, fraction, 128, head_ratio=2.0)
        assert heads > even[0] and ffn < even[1]  # more heads, fewer channels ...
        assert flops_fraction(st, heads, ffn, 128) == pytest.approx(fraction, abs=0.01)  # ... same FLOPs
        assert heads / 12 == pytest.approx(2 * ffn / 1200, abs=0.1)  # twice the channels' kept share
    assert shape_for_fraction(st, 0.9, 128, head_ratio=3.0)[0] == 12  # never more heads than there are


def test_shape_on_line_solves_the_fitted_line():
    st = model_structure(tiny_bert(heads=12, hidden=48, ffn=1200))
    line = [(x, 1.0 / (0.1 + 0.9 * x)) for x in (0.3, 0.5, 0.7)]
    for ratio in (1.0, 2.0):
        heads, ffn = shape_on_line(st, line, 2.0, 128, head_ratio=ratio)
        assert 1.0 / (0.1 + 0.9 * flops_fraction(st, heads, ffn, 128)) == pytest.approx(2.0, rel=0.03)
