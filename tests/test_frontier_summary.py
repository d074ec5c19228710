"""The frontier harness's comparison with the tutorial (bench/frontier.py: pure functions)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "frontier_report.py"
_spec = importlib.util.spec_from_file_location("frontier_report", SCRIPT)
frontier = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(frontier)

TUTORIAL = [(2.6, 6.0), (3.4, 8.8), (4.5, 23.5)]


def test_interpolates_inside_the_tutorial_sweep():
    assert frontier.interpolate(TUTORIAL, 3.0) == pytest.approx(7.4)
    assert frontier.versus_tutorial({"speedup": 3.0, "drop": 7.0}, TUTORIAL) == (pytest.approx(7.4), True)
    assert frontier.versus_tutorial({"speedup": 3.0, "drop": 7.5}, TUTORIAL)[1] is False


def test_outside_the_sweep_only_domination_counts():
    assert frontier.interpolate(TUTORIAL, 4.7) is None
    assert frontier.versus_tutorial({"speedup": 4.7, "drop": 7.7}, TUTORIAL) == (None, True)  # faster, better
    assert frontier.versus_tutorial({"speedup": 2.1, "drop": 6.5}, TUTORIAL) == (None, False)  # x2.6 at 6.0
    assert frontier.versus_tutorial({"speedup": 2.1, "drop": 5.0}, TUTORIAL) == (None, None)


def test_comparison_table_and_goal_check():
    rows = [{"task": "stsb", "method": "tutorial", "sweep": {"regular_scale": float(i)}, "speedup": s, "drop": d}
            for i, (s, d) in enumerate(TUTORIAL)]
    rows.append({"task": "stsb", "method": "trimformer", "sweep": {"target_speedup": 3.0}, "speedup": 3.0, "drop": 1.0})
    text = "\n".join(frontier.comparison_lines(rows))
    assert "| trimformer | x3 | stsb | 3.00x | +1.00 | +7.40 | yes |" in text
    assert "| trimformer | x3 | 1 | 3.00x | +1.00 | <= 1.5 | met | 1 of 1 |" in text
