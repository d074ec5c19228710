"""Branch a frontier point after one of its stages and finish it with other settings: an ablation
of the later stages from one shared starting point (same masks, same weights), so two variants of,
say, the FFN stage differ only in what that stage does.

    python bench/branch.py --task cola --point trimformer-3 --after distil --name ffnhid \\
        --override ffn.hidden_distill=1 [--work runs/frontier] [--results runs/branches]

It copies `<work>/<task>/<point>` (kept: the stages up to and including `--after`, its target and
teacher logits) to `<work>/<task>/<point>+<name>`, re-runs the point's command with the overrides
appended (the earlier stages are skipped as done), and writes one JSON row per branch, with every
stage's metrics and the source point's, to `--results`. A branch whose JSON exists is skipped.
`--stop-after STAGE` ends the branch there (an A/B of one stage; the row then has no final metrics).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from frontier import ROOT, STAGES, Harness, base_cmd, branch_dir, method_overrides, metric_fields, run  # noqa: E402

from trimformer.io import write_json  # noqa: E402


def stage_metrics(out: Path) -> dict[str, dict]:
    """Each finished stage's dev metrics."""
    rows = {}
    for stage in STAGES:
        done = out / "stages" / stage / "done.json"
        if done.is_file():
            rows[stage] = json.loads(done.read_text())["metrics"]
    return rows


def branch_row(args: argparse.Namespace, source: Path, out: Path, seconds: float, command: str) -> dict:
    """One branch's result row: the final metrics (unless stopped early), every stage's metrics and
    the source point's, so the row alone compares the branch with where it came from."""
    row = {"task": args.task, "point": args.point, "branch": args.name, "after": args.after,
           "overrides": args.override}
    if args.stop_after is None:
        report = json.loads((out / "report.json").read_text())
        row.update({**metric_fields(report), "speedup_at_run": report["speedup"]})
    else:
        row["stop_after"] = args.stop_after
    row.update({"stages": stage_metrics(out), "source_stages": stage_metrics(source), "seconds": seconds,
                "command": command})
    return row


def prepare(source: Path, out: Path, after: str, override: list[str]) -> None:
    """Make the branch folder, or keep it to resume a crashed run, but only if this very branch made
    it: an older branch of the same name with other settings would otherwise be passed off as this
    one, its later stages skipped as done."""
    made_by = {"source": str(source), "after": after, "override": override}
    record = out / "branch.json"
    if (record.is_file() and json.loads(record.read_text()) == made_by
            and (out / "stages" / after / "done.json").is_file()):
        return
    branch_dir(source, out, after)
    record.write_text(json.dumps(made_by))


def source_overrides(source: Path) -> list[str]:
    """The overrides a source point that is itself a branch (`taylor-5+dec97`) was made with, all the
    way up, so a branch of it runs and records the same settings for the stages it keeps."""
    record = source / "branch.json"
    if not record.is_file():
        return []
    made_by = json.loads(record.read_text())
    return [*source_overrides(Path(made_by["source"])), *made_by["override"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True)
    parser.add_argument("--point", required=True,
                        help="the source point's folder name, e.g. trimformer-3, or a branch's, e.g. taylor-5+dec97")
    parser.add_argument("--after", required=True, choices=STAGES[:-1])
    parser.add_argument("--method", help="the source point's method when its folder name is an older one")
    parser.add_argument("--name", required=True, help="the branch's name (folder <point>+<name>)")
    parser.add_argument("--override", nargs="*", default=[], help="recipe key=value for the later stages")
    parser.add_argument("--stop-after", choices=STAGES[1:], help="end the branch after this stage")
    parser.add_argument("--glue-dir", default=str(ROOT.parent / "shared" / "glue"))
    parser.add_argument("--work", default=str(ROOT / "runs" / "frontier"))
    parser.add_argument("--results", default=str(ROOT / "runs" / "branches"))
    args = parser.parse_args()
    method, value = args.point.split("+", 1)[0].rsplit("-", 1)
    method = args.method or method
    work = Path(args.work)
    source, out = work / args.task / args.point, work / args.task / f"{args.point}+{args.name}"
    inherited = source_overrides(source)
    result = Path(args.results) / f"{args.task}-{args.point}+{args.name}.json"
    if result.is_file():
        return
    prepare(source, out, args.after, args.override)
    flags, overrides = method_overrides(method, float(value))
    cmd = [*base_cmd(args.task, Harness(args.glue_dir, work), out), "--resume", *flags, *overrides, *inherited,
           *args.override,
           *(["--stop-after", args.stop_after] if args.stop_after else [])]
    start = time.perf_counter()
    run(cmd)
    row = branch_row(args, source, out, time.perf_counter() - start,
                     " ".join(str(c) for c in cmd).replace(sys.executable, "python"))
    write_json(result, row)
    print(json.dumps({k: row.get(k) for k in ("task", "point", "branch", "pruned_metric", "drop", "stop_after")}))


if __name__ == "__main__":
    main()
