"""How far a seeded method is from the recipe's method on the frontier, next to the seeds' noise.

A five-task mean drop moves by 0.5-1.7 points from seed to seed, so a switch is only worth adopting
when it moves the mean by more than that noise. For each method run at several seeds (`M`, `M_s1025`,
... in bench/frontier.py) and each target, this takes the difference of its five-task mean drop from
the reference's (`taylor_reg`, what `--recipe trimformer` runs), task by task, and a 95% interval for
it from the spread of each method's drops over its seeds within each task (pooled over the tasks).
The tasks are fixed, not sampled: the interval is the seed noise of the five-task mean, which is what
the issue's goal is judged on. Seeds are not paired: the same seed on another GPU call trains
differently (bf16 kernels), so each task's difference is of two means over independent runs.
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


def _pooled_variance(groups: list[list[float]]) -> tuple[float, int]:
    """Within-group variance pooled over groups, and its degrees of freedom."""
    squares = sum(sum((x - sum(g) / len(g)) ** 2 for x in g) for g in groups)
    freedom = sum(len(g) - 1 for g in groups)
    return squares / freedom, freedom


def differences(rows: list[dict], reference: str = REFERENCE) -> list[Difference]:
    """Every seeded method against `reference`, per target run on every task by both at 2+ seeds."""
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
            var_mine, df_mine = _pooled_variance(mine)
            var_theirs, df_theirs = _pooled_variance(theirs)
            per_task = [sum(a) / len(a) - sum(b) / len(b) for a, b in zip(mine, theirs, strict=True)]
            error = math.sqrt(sum(var_mine / len(a) + var_theirs / len(b)
                                  for a, b in zip(mine, theirs, strict=True))) / len(all_tasks)
            freedom = min(df_mine, df_theirs)  # conservative (Welch's would be between this and the sum)
            found.append(Difference(method, target, len(all_tasks), sum(per_task) / len(per_task),
                                    t_quantile_95(freedom) * error, freedom))
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
