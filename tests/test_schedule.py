"""Schedules are pure functions of the step; cubic matches NNI's formula."""

from __future__ import annotations

import pytest

from trimformer.schedule import Constant, Cubic, Iterative, Linear, per_round_sparsity, sparsity_at


def nni_cubic(step: int, warm_up: int, cool_down: int, total: float) -> float:
    # The formula in NNI's movement pruner / Zhu & Gupta (2017), written out independently.
    if step < warm_up:
        return 0.0
    if step >= cool_down:
        return total
    return total - total * (1 - (step - warm_up) / (cool_down - warm_up)) ** 3


@pytest.mark.parametrize("step", [0, 9, 10, 11, 35, 55, 89, 90, 120])
def test_cubic_matches_nni(step):
    assert sparsity_at(Cubic(10, 90), 0.8, step) == pytest.approx(nni_cubic(step, 10, 90, 0.8))


def test_cubic_phases():
    sched = Cubic(warm_up=100, cool_down=400)
    assert sched(50) == 0.0  # warm-up: nothing pruned
    assert sched(250) == pytest.approx(1 - 0.5 ** 3)  # middle
    assert sched(400) == 1.0 and sched(1000) == 1.0  # cool-down: the full target


def test_linear_and_constant():
    assert Constant()(0) == 1.0
    assert Linear(0, 10)(5) == 0.5 and Linear(0, 10)(20) == 1.0 and Linear(5, 10)(0) == 0.0


def test_iterative_rounds_compound_to_target():
    sched = Iterative(rounds=12, steps_per_round=10, target=0.5)
    assert sparsity_at(sched, 0.5, 0) == pytest.approx(per_round_sparsity(0.5, 12))
    assert sparsity_at(sched, 0.5, 119) == pytest.approx(0.5)
    kept = 1.0
    for _ in range(12):
        kept *= 1 - per_round_sparsity(0.5, 12)
    assert kept == pytest.approx(0.5)
    assert sched.round_of(25) == 3
