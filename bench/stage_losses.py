"""Where a frontier method's drop arises: each stage's change of the main metric, mean over seeds.

    python bench/stage_losses.py --method taylor_reg --work runs/frontier-gpu3 runs/frontier-gpu4 \\
        [--out bench/results/stage_losses.json]

reads every finished point folder `<work>/<task>/<method>[_s<seed>]-<target>` (the unpacked GPU
frontiers keep them, with each stage's `done.json`), and for each task and target prints and
writes the mean over seeds of the dense (fine-tune) metric and of each stage's change in points:
attention (heads masked while training), heads (the cut: 0 when the shrink is exact), distil, ffn.
A switch can only close the part of the gap that arises in the stage it changes.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from branch import stage_metrics as finished_stage_metrics  # noqa: E402

from trimformer.glue import get_task  # noqa: E402
from trimformer.io import write_json  # noqa: E402

STAGES = ("finetune", "attention", "heads", "distil", "ffn")


def stage_metrics(point: Path, main_metric: str) -> list[float] | None:
    """The main metric after each stage of STAGES, or None if the point has not finished them."""
    finished = finished_stage_metrics(point)  # bench/branch.py's reading of the done.json files
    if any(stage not in finished for stage in STAGES):
        return None
    for stage in STAGES:
        if main_metric not in finished[stage]:
            raise SystemExit(f"{point / 'stages' / stage / 'done.json'}: no {main_metric!r} among its metrics "
                             f"{sorted(finished[stage])}")
    return [float(finished[stage][main_metric]) for stage in STAGES]


def stage_losses(works: list[Path], method: str) -> list[dict]:
    """One row per (task, target): seeds found, dense metric and each stage's mean change in points."""
    pattern = re.compile(rf"{re.escape(method)}(_s\d+)?-(\d+(?:\.\d+)?)$")
    found: dict[tuple[str, float], list[list[float]]] = {}
    seen: dict[tuple[str, str], Path] = {}
    for work in works:
        if not work.is_dir():
            raise SystemExit(f"{work}: no such frontier work folder")
        for point in sorted(work.glob("*/*")):
            match = pattern.match(point.name)
            if not match:
                continue
            task = point.parent.name
            if (task, point.name) in seen:  # one run unpacked twice would count as two seeds
                raise SystemExit(f"{point} and {seen[task, point.name]}: the same point in two work folders")
            seen[task, point.name] = point
            values = stage_metrics(point, get_task(task).main_metric)
            if values is not None:
                found.setdefault((task, float(match.group(2))), []).append(values)
    rows = []
    for (task, target), runs in sorted(found.items()):
        mean = [statistics.mean(run[i] for run in runs) for i in range(len(STAGES))]
        changes = {stage: 100 * (mean[i] - mean[i - 1]) for i, stage in enumerate(STAGES) if i > 0}
        rows.append({"task": task, "target": target, "seeds": len(runs), "dense": mean[0], **changes,
                     "drop": 100 * (mean[0] - mean[-1])})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", required=True)
    parser.add_argument("--work", nargs="+", required=True, help="frontier work folders (<work>/<task>/<point>)")
    parser.add_argument("--out", help="write the rows and the command here (JSON)")
    args = parser.parse_args()
    rows = stage_losses([Path(w) for w in args.work], args.method)
    if not rows:
        raise SystemExit(f"no finished {args.method} point under {', '.join(args.work)}")
    for row in rows:
        print(f"{row['task']:5} x{row['target']:g} ({row['seeds']} seeds): dense {row['dense']:.3f}; "
              + ", ".join(f"{stage} {row[stage]:+.1f}" for stage in STAGES[1:]) + f"; drop {row['drop']:.1f}")
    if args.out:
        write_json(args.out, {"command": "python " + " ".join(sys.argv), "method": args.method, "rows": rows})


if __name__ == "__main__":
    main()
