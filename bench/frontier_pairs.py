"""How far a seeded method is from the recipe's method on the frontier, next to the seeds' noise.

A five-task mean drop moves by 0.5-1.7 points from seed to seed, so a switch is only worth adopting
when it moves the mean by more than that noise. For each method run at several seeds (`M`, `M_s1025`,
... in bench/frontier.py) and each target, this takes the difference of its five-task mean drop from
the reference's (`taylor_reg`, what `--recipe trimformer` runs), task by task, and a 95% interval for
it from the spread of each method's drops over its seeds within each task.
The tasks are fixed, not sampled: the interval is the seed noise of the five-task mean, which is what
the issue's goal is judged on. Seeds are not paired: the same seed on another GPU call trains
differently (bf16 kernels), so each task's difference is of two means over independent runs. Of many
such 95% intervals, one in twenty excludes zero by chance alone.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

REFERENCE = "taylor_reg"
SEED_VARIANT = re.compile(r"_s\d+$")
# Two-sided 95% quantiles of Student's t by degrees of freedom (the largest listed at or below is used).
T_QUANTILE_95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26,
                 10: 2.23, 12: 2.18, 15: 2.13, 20: 2.09, 30: 2.04, 60: 2.00, 120: 1.98}


@dataclass(frozen=True)
class Difference:
    """One method against the reference at one target, over the tasks both ran at 2+ seeds."""

    method: str
    target: float
    tasks: int
    difference: float  # the method's mean drop minus the reference's, points (negative: the method lost less)
    half_width: float  # of the 95% interval around `difference`
    degrees_of_freedom: int


def t_quantile_95(degrees_of_freedom: int) -> float:
    """Student's t two-sided 95% quantile, from the table (conservative between its entries)."""
    if degrees_of_freedom < 1:
        raise ValueError("an interval needs at least one degree of freedom")
    return T_QUANTILE_95[max(k for k in T_QUANTILE_95 if k <= degrees_of_freedom)]


def _drops(rows: list[dict]) -> dict[tuple[str, float, str], list[float]]:
    """{(method without its seed suffix, target, task): drops over seeds}, target points only."""
    drops: dict[tuple[str, float, str], list[float]] = {}
    for r in rows:
        target = r.get("sweep", {}).get("target_speedup")
        if target is not None:
            drops.setdefault((SEED_VARIANT.sub("", r["method"]), target, r["task"]), []).append(r["drop"])
    return drops


def _variance(drops: list[float]) -> float:
    """Sample variance (n - 1 in the denominator)."""
    mean = sum(drops) / len(drops)
    return sum((x - mean) ** 2 for x in drops) / (len(drops) - 1)


def differences(rows: list[dict], reference: str = REFERENCE) -> list[Difference]:
    """Every seeded method against `reference`, per target run on every task by both at 2+ seeds.

    Each (task, method) cell keeps its own seed variance (CoLA's is 10-100x the others'), so the
    mean's squared error is sum(var / n) / tasks^2 and its degrees of freedom Welch-Satterthwaite's
    over the cells (rounded down, so the t quantile errs wide)."""
    drops = _drops(rows)
    all_tasks = sorted({r["task"] for r in rows})
    seeded = sorted({m for (m, _, _), d in drops.items() if len(d) >= 2 and m != reference})
    found = []
    for method in seeded:
        for target in sorted({t for (m, t, _) in drops if m == method}):
            mine = [drops.get((method, target, task), []) for task in all_tasks]
            theirs = [drops.get((reference, target, task), []) for task in all_tasks]
            if any(len(g) < 2 for g in mine + theirs):
                continue  # a task missing or at one seed: not the mean the goal is judged on
            per_task = [sum(a) / len(a) - sum(b) / len(b) for a, b in zip(mine, theirs, strict=True)]
            shares = [(_variance(g) / len(g), len(g) - 1) for g in mine + theirs]  # (var / n, its freedom)
            squared = sum(v for v, _ in shares)
            spread = sum(v * v / f for v, f in shares)
            freedom = int(squared * squared / spread) if spread > 0 else sum(f for _, f in shares)
            error = math.sqrt(squared) / len(all_tasks)
            found.append(Difference(method, target, len(all_tasks), sum(per_task) / len(per_task),
                                    t_quantile_95(max(1, freedom)) * error, max(1, freedom)))
    return found


def difference_lines(rows: list[dict], reference: str = REFERENCE) -> list[str]:
    """frontier.md's section: each seeded method's difference from `reference`, with its interval."""
    found = differences(rows, reference)
    if not found:
        return []
    lines = ["", f"## Against `{reference}` over seeds (95% interval from the seeds' spread)", "",
             f"Mean drop of the method minus `{reference}`'s, points over the tasks (negative: the method "
             "lost less); an interval that holds 0 is a difference the seeds cannot tell from noise.", "",
             "| method | target | tasks | difference | 95% interval | degrees of freedom |",
             "| --- | --- | --- | --- | --- | --- |"]
    for d in found:
        lines.append(f"| {d.method} | x{d.target:g} | {d.tasks} | {d.difference:+.2f} | "
                     f"{d.difference - d.half_width:+.2f} to {d.difference + d.half_width:+.2f} | "
                     f"{d.degrees_of_freedom} |")
    return lines
