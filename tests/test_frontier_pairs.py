"""A seeded method against the recipe's, with the seeds' noise (bench/frontier_pairs.py)."""

from __future__ import annotations

import math

import pytest

from tests.bench_scripts import load_bench

pairs = load_bench("frontier_pairs")


def row(method: str, task: str, drop: float, target: float = 3.0) -> dict:
    return {"method": method, "task": task, "sweep": {"target_speedup": target}, "speedup": target, "drop": drop}


def test_difference_and_interval_by_hand():
    """Two tasks, two seeds each: task a differs by -1 (drops 1, 3 against 2, 4), task b by +3."""
    rows = [row("taylor_reg", "a", 2.0), row("taylor_reg_s1025", "a", 4.0), row("taylor_reg", "b", 1.0),
            row("taylor_reg_s1025", "b", 1.0), row("m", "a", 1.0), row("m_s1025", "a", 3.0),
            row("m", "b", 4.0), row("m_s1025", "b", 4.0)]
    (found,) = pairs.differences(rows)
    assert (found.method, found.target, found.tasks) == ("m", 3.0, 2)
    assert found.difference == pytest.approx(1.0)
    # Cell variances / n: method a 2/2, b 0, reference a 2/2, b 0: the mean of two tasks has error
    # sqrt(1 + 1) / 2; Welch's degrees of freedom (1 + 1)^2 / (1/1 + 1/1) = 2; t(2) = 4.30.
    assert found.degrees_of_freedom == 2
    assert found.half_width == pytest.approx(4.30 * math.sqrt(2) / 2)
    line = pairs.difference_lines(rows)[-1]
    assert line == "| m | x3 | 2 | +1.00 | -2.04 to +4.04 | 2 |"


def test_only_targets_every_task_ran_at_two_seeds_count():
    rows = [row("taylor_reg", "a", 2.0), row("taylor_reg_s1025", "a", 4.0), row("taylor_reg", "b", 1.0),
            row("m", "a", 1.0), row("m_s1025", "a", 3.0), row("m", "b", 4.0), row("m_s1025", "b", 4.0),
            {"method": "tutorial", "task": "a", "sweep": {"regular_scale": 1.0}, "speedup": 2.0, "drop": 9.0}]
    assert pairs.differences(rows) == []  # the reference has one seed on task b
    assert pairs.difference_lines(rows) == []
    rows.append(row("taylor_reg_s1025", "b", 3.0))
    assert [d.method for d in pairs.differences(rows)] == ["m"]
    assert pairs.differences(rows + [row("m", "c", 1.0)]) == []  # a task the others lack: not the full mean


def test_t_quantiles_are_conservative_between_table_entries():
    assert pairs.t_quantile_95(10) == 2.23
    assert pairs.t_quantile_95(11) == 2.23  # df 11's own is 2.20: the table rounds towards wider
    assert pairs.t_quantile_95(1000) == 1.98
    with pytest.raises(ValueError):
        pairs.t_quantile_95(0)


def test_unequal_seed_variances_get_welchs_degrees_of_freedom():
    """Task a's drops spread 10 points over three seeds, task b's 0.2: Welch's degrees of freedom,
    (8.33 + 0.0033 + 5.33 + 0.0033)^2 / (8.33^2 / 2 + 5.33^2 / 2 + ...) = 3.8, so 3 (t = 3.18), where
    pooling the cells would have claimed 4 or more."""
    rows = [row("taylor_reg" + s, "a", d) for s, d in zip(("", "_s1025", "_s1026"), (0.0, 10.0, 5.0), strict=True)]
    rows += [row("taylor_reg" + s, "b", d) for s, d in zip(("", "_s1025", "_s1026"), (1.0, 1.2, 1.1), strict=True)]
    rows += [row("m" + s, "a", d) for s, d in zip(("", "_s1025", "_s1026"), (1.0, 9.0, 5.0), strict=True)]
    rows += [row("m" + s, "b", d) for s, d in zip(("", "_s1025", "_s1026"), (4.0, 4.1, 4.2), strict=True)]
    (found,) = pairs.differences(rows)
    assert found.degrees_of_freedom == 3
    error = math.sqrt(25 / 3 + 0.01 / 3 + 16 / 3 + 0.01 / 3) / 2
    assert found.half_width == pytest.approx(3.18 * error)
    assert found.difference == pytest.approx(((5 - 5) + (4.1 - 1.1)) / 2)
