"""The frontier's summary: re-timing finished points, the comparison with the tutorial, table and plot.

Used by `bench/frontier.py`; kept apart so the comparison rules are small, pure and tested
(tests/test_frontier_summary.py).
"""

from __future__ import annotations

import json
import os
import re
import statistics
import sys
from pathlib import Path

from trimformer.atomic import write_atomic
from trimformer.io import write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling, however this file was loaded
from frontier_pairs import difference_lines  # noqa: E402

GOALS = {2.0: 0.5, 3.0: 1.5, 5.0: 3.0}  # the mean drop (points) allowed at each speedup
# Drawn with solid lines in the plot: the baseline, the first method and what `--recipe trimformer` runs.
MAIN_METHODS = ("tutorial", "trimformer", "taylor", "taylor_reg")
SEED_VARIANT = re.compile(r"_s\d+$")  # `taylor_reg_s1025`: a method run at another seed (bench/frontier.py)


def is_target_point(row: dict) -> bool:
    """A point swept by target speedup (a trimformer method), not by the tutorial's regular_scale."""
    return "target_speedup" in row["sweep"]


def point_rows(results: Path) -> list[tuple[Path, dict]]:
    """Every frontier point's JSON in `results`, with its path. A branch row (bench/branch.py) kept in
    the same folder has no `method` and is not a point."""
    rows = [(path, json.loads(path.read_text())) for path in sorted(results.glob("*.json"))]
    return [(path, row) for path, row in rows if "method" in row]


def shape_folder(work: Path, row: dict, scratch: Path) -> Path | None:
    """A folder whose config.json describes the point's pruned model: the point's own, or, when the
    point was trained in a work folder not kept here, another point's config of the same task with
    the row's recorded heads and FFN widths per layer (all that latency depends on). None if neither."""
    value = next(iter(row["sweep"].values()))
    own = work / row["task"] / f"{row['method']}-{value:g}" / "model"
    if (own / "config.json").is_file():
        return own
    donors = sorted(work.glob(f"{row['task']}/*/model/config.json"))
    if not donors or "heads_per_layer" not in row or "ffn_per_layer" not in row:
        return None
    config = json.loads(donors[0].read_text())
    config["trimformer_heads_per_layer"] = row["heads_per_layer"]
    config["trimformer_ffn_per_layer"] = row["ffn_per_layer"]
    scratch.mkdir(parents=True, exist_ok=True)
    (scratch / "config.json").write_text(json.dumps(config))
    return scratch


def remeasure(results: Path, work: Path, repeats: int) -> None:
    """Time every finished point again on a quiet machine (dense and pruned interleaved in one process)
    and store it as `speedup`; the figure taken at the end of the run stays as `speedup_at_run`. Only
    each point's shape is needed: latency does not depend on the weights' values, so points trained
    elsewhere (a GPU) are timed here from their model/config.json or, without it, their recorded widths."""
    import tempfile

    from trimformer.bench import compare_latency
    from trimformer.io import build_architecture

    for path, row in point_rows(results):
        with tempfile.TemporaryDirectory() as scratch:
            folder = shape_folder(work, row, Path(scratch))
            if folder is None:
                print(f"skip {path.name}: no model/config.json of {row['task']} under {work}")
                continue
            dense, pruned = build_architecture(folder, dense=True), build_architecture(folder)
        result = compare_latency(dense.eval(), pruned.eval(), 32, 128, warmup=3, repeats=repeats)
        add_timing(row, result.speedup, repeats)
        # The medians of the latest pass, so a pass taken under other load shows: the dense model then
        # runs slow, and the ratio drops too (on 2 cores one busy core took CoLA x3 from x3.09 to x2.43).
        row["latency_dense_s"], row["latency_pruned_s"] = result.reference.median_s, result.candidate.median_s
        row["load_average"] = os.getloadavg()[0]
        write_json(path, row)
        print(f"{path.name}: x{row['speedup_at_run']:.2f} at run, x{result.speedup:.2f} now, "
              f"x{row['speedup']:.2f} over {len(row['speedup_timings'])} passes", flush=True)


def add_timing(row: dict, speedup: float, repeats: int) -> None:
    """Record one more quiet timing of a point; its `speedup` becomes the median over all of them.
    On the 2-core machine two quiet passes of the same point differ by several percent, sometimes
    15% (other tenants of the host), so each pass is kept and the median of the passes is used.
    A row timed before passes were kept holds one earlier pass in `speedup` (`speedup_at_run` set)."""
    if "speedup_timings" not in row:
        row["speedup_timings"] = [row["speedup"]] if "speedup_at_run" in row else []
        row.setdefault("speedup_at_run", row["speedup"])
    row["speedup_timings"].append(speedup)
    row["speedup"] = statistics.median(row["speedup_timings"])
    row["speedup_command"] = f"python bench/frontier.py --remeasure --repeats {repeats}  # once per pass"


def interpolate(points: list[tuple[float, float]], x: float) -> float | None:
    """Linear interpolation of (speedup, drop) points at speedup x; None outside their range."""
    points = sorted(points)
    for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return points[0][1] if len(points) == 1 and abs(points[0][0] - x) < 1e-9 else None


def versus_tutorial(row: dict, tutorial: list[tuple[float, float]]) -> tuple[float | None, bool | None]:
    """(the tutorial's drop interpolated at the row's speedup, whether the row is ahead). Outside the
    tutorial's range a point still counts as ahead when a tutorial point is no faster and no better
    (it dominates), and as behind when a tutorial point is no slower and no worse."""
    theirs = interpolate(tutorial, row["speedup"]) if tutorial else None
    if theirs is not None:
        return theirs, row["drop"] < theirs
    if any(s <= row["speedup"] and d >= row["drop"] for s, d in tutorial):
        return None, True
    if any(s >= row["speedup"] and d <= row["drop"] for s, d in tutorial):
        return None, False
    return None, None


def comparison_lines(rows: list[dict]) -> list[str]:
    """Per method swept by target and per target: each task's drop, the tutorial's at the same
    measured speedup (interpolated along its own sweep on that task), means over tasks, the goal."""
    lines = ["## Each method vs the tutorial at the same speedup", "",
             "Tutorial drops are interpolated along its own sweep on the same task at the method's measured "
             "speedup; outside the sweep's range a point is ahead when it dominates a tutorial point (faster "
             "and better), behind when dominated, else n/a.", "",
             "| method | target | task | speedup | drop | tutorial drop | ahead |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    groups, summary = _groups(rows), []
    all_tasks = len({r["task"] for r in rows})
    keys = sorted({(r["method"], r["sweep"]["target_speedup"]) for r in rows if is_target_point(r)})
    for method, target in keys:
        ours = sorted((r for r in rows if r["method"] == method and r["sweep"]["target_speedup"] == target),
                      key=lambda r: r["task"])
        ahead = []
        for r in ours:
            theirs, is_ahead = versus_tutorial(r, [(t["speedup"], t["drop"]) for t in groups.get((r["task"],
                                                                                                 "tutorial"), [])])
            if is_ahead is not None:
                ahead.append(is_ahead)
            verdict = "n/a" if is_ahead is None else ("yes" if is_ahead else "no")
            lines.append(f"| {method} | x{target:g} | {r['task']} | {r['speedup']:.2f}x | {r['drop']:+.2f} | "
                         f"{'n/a' if theirs is None else f'{theirs:+.2f}'} | {verdict} |")
        goal, mean = GOALS.get(target), sum(r["drop"] for r in ours) / len(ours)
        # The goal is a mean over every task: a target run on some of them is not judged.
        verdict = ("n/a" if goal is None else f"partial ({len(ours)} of {all_tasks} tasks)" if len(ours) < all_tasks
                   else "met" if mean <= goal else "not met")
        summary.append(f"| {method} | x{target:g} | {len(ours)} | {sum(r['speedup'] for r in ours) / len(ours):.2f}x "
                       f"| {mean:+.2f} | {'n/a' if goal is None else f'<= {goal:g}'} | {verdict} | "
                       f"{sum(ahead)} of {len(ahead)} |")
    lines += ["", "## Goal check (mean over the tasks run so far)", "",
              "| method | target | tasks | mean speedup | mean drop | goal | | ahead of the tutorial |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |", *summary]
    return lines


def timing_lines(rows: list[dict]) -> list[str]:
    """How far a point's quiet re-timing passes stray from their median (speedups up to x8, where
    the goal is judged): the measurement error behind every speedup in the table."""
    passes = [r["speedup_timings"] for r in rows if len(r.get("speedup_timings", [])) > 1 and r["speedup"] <= 8]
    if not passes:
        return []
    off = sorted(abs(t / statistics.median(ts) - 1) for ts in passes for t in ts)
    counts = sorted({len(ts) for ts in passes})
    return ["", f"Timing spread: {len(passes)} points up to x8 re-timed in {'/'.join(map(str, counts))} quiet passes "
            f"(`speedup_timings`; `speedup` is their median). A pass strays from its point's median by "
            f"{statistics.median(off):.1%} in the median, {off[int(0.9 * (len(off) - 1))]:.1%} at the 90th "
            f"percentile, {off[-1]:.1%} at most."]


def write_summary(results: Path, protocol: str) -> None:
    """Combined table (Markdown) and plot (PNG) over every result JSON."""
    rows = [row for _, row in point_rows(results)]
    if not rows:  # e.g. a sweep stopped after the fine-tunes: nothing to summarise yet
        return
    lines = ["| task | method | sweep | dense | pruned | drop (points) | speedup | FLOPs ratio | sparsity |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in sorted(rows, key=lambda r: (r["task"], r["method"], r["speedup"])):
        sweep = ", ".join(f"{k}={v:g}" for k, v in r["sweep"].items())
        lines.append(f"| {r['task']} | {r['method']} | {sweep} | {r['dense_metric']:.4f} "
                     f"| {r['pruned_metric']:.4f} | {r['drop']:+.2f} | {r['speedup']:.2f}x "
                     f"| {r['flops_ratio']:.2f}x | {r['total_sparsity']:.1%} |")
    machines = sorted({r.get("trained_on", "CPU") for r in rows})
    protocol += " Trained on: " + "; ".join(machines) + "."
    text = ("# Frontier\n\n" + protocol + "\n\n" + "\n".join(lines) + "\n\n" + "\n".join(comparison_lines(rows))
            + "\n" + "".join(line + "\n" for line in seed_lines(rows) + difference_lines(rows) + timing_lines(rows)))
    write_atomic(results / "frontier.md", text)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # One panel per task (metrics and scales differ), one line per method; speedups past x8 (the
    # tutorial's collapsed points) are left out of view so the x2-x5 region stays readable.
    tasks = sorted({r["task"] for r in rows})
    metric = {r["task"]: r["main_metric"] for r in rows}
    cols, rows_of_panels = min(3, len(tasks)), (len(tasks) + 2) // 3
    fig, axes = plt.subplots(rows_of_panels, cols, figsize=(4.2 * cols, 3.4 * rows_of_panels), squeeze=False)
    # Seed variants (`M_s1025`) stay out of the plot: their means are frontier.md's seed table.
    methods = sorted({r["method"] for r in rows if not SEED_VARIANT.search(r["method"])},
                     key=lambda m: (m != "tutorial", m != "trimformer", m))
    colors = plt.get_cmap("tab20").colors  # a dozen methods outrun the default ten-colour cycle

    def style(i: int, method: str) -> dict:
        line = "-" if method in MAIN_METHODS else ":"
        return {"marker": "os^Dvx<>ph"[i % 10], "linestyle": line, "color": colors[(2 * i) % 20 + (i >= 10)],
                "label": method, "markersize": 4}

    panels = list(axes.flat)
    for ax, task in zip(panels, tasks, strict=False):
        for i, method in enumerate(methods):
            group = sorted((r for r in rows if r["task"] == task and r["method"] == method and r["speedup"] <= 8),
                           key=lambda r: r["speedup"])
            ax.plot([r["speedup"] for r in group], [r["drop"] for r in group], **style(i, method))
        ax.set_title(f"{task} ({metric[task]})", fontsize=9)
    # A spare panel shows what the goal is judged on: each target method's mean over the tasks.
    if len(panels) > len(tasks) and len(tasks) > 1:
        ax = panels[len(tasks)]
        for i, method in enumerate(methods):
            means = mean_points([r for r in rows if r["method"] == method and is_target_point(r)], len(tasks))
            if means:
                ax.plot([s for s, _ in means], [d for _, d in means], **style(i, method))
        ax.plot(list(GOALS), list(GOALS.values()), "k*", markersize=9, linestyle="none", label="goal")
        ax.set_title(f"mean over the {len(tasks)} tasks", fontsize=9)
    for ax in panels[: len(tasks) + 1]:
        if ax.has_data():
            ax.set_xlabel("measured CPU speedup (x)", fontsize=8)
            ax.set_ylabel("drop (points, lower is better)", fontsize=8)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=5.5, ncol=2)
    for ax in panels:
        if not ax.has_data():
            ax.axis("off")
    fig.tight_layout()
    # A 256-colour PNG: a third of the RGBA file's size (the plot is rewritten with every summary and
    # tracked), the same pixels to the eye.
    from io import BytesIO

    from PIL import Image

    rendered = BytesIO()
    fig.savefig(rendered, format="png", dpi=110)
    plt.close(fig)
    # Points finishing together on a GPU machine each rewrite the summary: a shared temp name raced.
    quantized = BytesIO()
    Image.open(rendered).convert("RGB").quantize(256).save(quantized, format="PNG", optimize=True)
    write_atomic(results / "frontier.png", quantized.getvalue())


def mean_by_target(rows: list[dict], tasks: int) -> dict[float, tuple[float, float]]:
    """{target: (mean speedup, mean drop)} over the rows of one method, for targets run on all
    `tasks` tasks (a partial target would compare a different set of tasks)."""
    by_target: dict[float, list[dict]] = {}
    for r in rows:
        by_target.setdefault(r["sweep"]["target_speedup"], []).append(r)
    return {target: (sum(r["speedup"] for r in group) / tasks, sum(r["drop"] for r in group) / tasks)
            for target, group in sorted(by_target.items()) if len(group) == tasks}


def mean_points(rows: list[dict], tasks: int) -> list[tuple[float, float]]:
    """(mean speedup, mean drop) per complete target, in target order (the plot's mean panel)."""
    return list(mean_by_target(rows, tasks).values())


def seed_lines(rows: list[dict]) -> list[str]:
    """Means over seeds: a method `M` and its variants `M_s<seed>` (bench/frontier.py) averaged per
    target, each seed's five-task mean first (targets run on every task only); empty without variants."""
    tasks = len({r["task"] for r in rows})
    by_method: dict[str, dict[str, list[dict]]] = {}
    for r in rows:
        if is_target_point(r):
            base = SEED_VARIANT.sub("", r["method"])
            by_method.setdefault(base, {}).setdefault(r["method"], []).append(r)
    lines = []
    for base, variants in sorted(by_method.items()):
        if len(variants) < 2:
            continue
        per_target: dict[float, list[tuple[float, float]]] = {}
        for variant_rows in variants.values():
            for target, mean in mean_by_target(variant_rows, tasks).items():
                per_target.setdefault(target, []).append(mean)
        for target, means in sorted(per_target.items()):
            drops = [d for _, d in means]
            lines.append(f"| {base} | x{target:g} | {len(means)} | {sum(s for s, _ in means) / len(means):.2f}x | "
                         f"{sum(drops) / len(drops):+.2f} | {min(drops):+.2f} to {max(drops):+.2f} |")
    if not lines:
        return []
    return ["", "## Means over seeds (each seed's mean over the tasks, then over seeds)", "",
            "| method | target | seeds | mean speedup | mean drop | range over seeds |",
            "| --- | --- | --- | --- | --- | --- |", *lines]


def _groups(rows: list[dict]) -> dict[tuple[str, str], list[dict]]:
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["method"]), []).append(r)
    return groups
