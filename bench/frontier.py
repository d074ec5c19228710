"""Accuracy/speedup frontier: the NNI tutorial's method vs trimformer's, same protocol, same machine.

    python bench/frontier.py [--tasks mrpc stsb rte cola sst2] [--points 2 3 5] [--scales 5 10 20 30]
                             [--methods tutorial trimformer] [--glue-dir ../shared/glue] [--work runs/frontier]
    python bench/frontier.py --remeasure [--repeats 20]   # re-time every finished point, quietly

Protocol (shared by every method, written into every result): the packaged MiniLM; fine-tune 3
epochs once per task (shared by all points and methods, with its teacher logits); then per point:
attention phase 1 epoch (warm-up 0.25, cool-down from 0.75), distil 1 epoch, FFN phase of 12 Taylor
rounds over 1 epoch, no final distil; batch 32; max length 128; lr 3e-5; seed 1024. SST-2 uses its
first 10,000 training rows, the other tasks all of theirs; dev sets in full. Speedup: measured CPU
latency, dense vs pruned, 32 x 128, interleaved in one process.

Methods:
  tutorial   - soft movement on per-head blocks (swept by regular_scale), the heads cut from the
               fine-tuned weights (the tutorial reloads them, keeping only the masks), a head removed
               only when all its blocks are masked, partly masked heads restored, the tutorial's FFN
               rule (keep half as much FFN as the layer kept heads)
  trimformer - `--target-speedup P`: heads and FFN sizes chosen from measured latency, hard movement
               on whole heads (q, k, v, o together) with distillation during that epoch, heads cut
               from the weights trained under the masks, coupled Taylor FFN channels in 12 rounds over
               the first three quarters of the FFN epoch, the last quarter at the final width
  target     - ablation: `--target-speedup P` with the default recipe's other settings (heads cut from
               the fine-tuned weights, no distillation while pruning attention, no recovery quarter)
  global     - trimformer's with heads and FFN channels allocated across layers by one ranking each
               (same totals, so about the same FLOPs and latency)
  hidden     - trimformer's plus layer-wise hidden-state distillation (MSE, weight 1) from the fine-tuned
               model in the attention, distil and FFN stages (the teacher runs at every step)

    python bench/frontier.py --tasks stsb --methods tutorial --scales 1 3 --stop-after heads
looks at the heads a few regular_scale values keep without finishing the runs (a finished run
resumes from there).

A run whose JSON exists is skipped, so the frontier can be built up over several sessions.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "frontier"
PROTOCOL = ["finetune.epochs=3", "finetune.lr=3e-5", "finetune.warmup_ratio=0", "attention.epochs=1",
            "attention.lr=3e-5", "attention.warm_up=0.25", "attention.cool_down=0.75", "distil.epochs=1",
            "distil.lr=3e-5", "ffn.epochs=1", "ffn.rounds=12", "ffn.lr=3e-5", "final_distil.enabled=false",
            "train_batch_size=32", "max_seq_length=128", "seed=1024", "max_train_samples=null",
            "finetune.eval_every=null", "distil.eval_every=null", "bench.batch_size=32", "bench.seq_len=128",
            "bench.repeats=10"]
TASK_SAMPLES = {"sst2": 10000}
GOALS = {2.0: 0.5, 3.0: 1.5, 5.0: 3.0}  # the mean drop (points) allowed at each speedup
# The tutorial's method as NNI ran it: soft movement on per-head blocks, scores trained by Adam at
# 1e-2, blocks kept above a threshold ramping to 0.1, a head removed when its value rows are masked,
# heads cut from the fine-tuned weights, the FFN kept at half the heads' keep ratio.
TUTORIAL = ["attention.mode=soft", "attention.granularity=auto", "attention.score_optimizer=adam",
            "attention.score_lr=0.01", "attention.threshold=0.1", "heads.rule=value", "heads.source=finetune",
            "heads.restore_partial=true", "ffn.rule=tutorial"]
# trimformer's method on top of `--target-speedup`: KD during the attention epoch, heads cut from the
# weights trained under the masks (not the fine-tuned ones), and the last quarter of the FFN epoch
# trained at the final width.
TRIMFORMER = ["attention.distill=true", "heads.source=attention", "ffn.recover=0.25"]
# Methods swept by target speedup: trimformer's; `target` (the latency target alone: the ablation
# that shows what the three settings above add); `global` (trimformer's with heads and FFN channels
# ranked across layers instead of the same share per layer); `hidden` (trimformer's with the
# hidden states after every layer distilled from the fine-tuned model in every pruning stage).
TARGET_METHODS = {"trimformer": TRIMFORMER, "target": [],
                  "global": [*TRIMFORMER, "attention.allocation=global", "ffn.allocation=global"],
                  "hidden": [*TRIMFORMER, "attention.hidden_distill=1", "distil.hidden_distill=1",
                             "ffn.hidden_distill=1"]}


def method_overrides(method: str, value: float) -> tuple[list[str], list[str]]:
    """(CLI flags, recipe overrides) for one point of one method."""
    if method in TARGET_METHODS:
        return ["--target-speedup", str(value)], TARGET_METHODS[method]
    return [], TUTORIAL + [f"attention.regular_scale={value}"]


def run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL)


def base_cmd(task: str, glue_dir: str, out: Path) -> list[str]:
    samples = [f"max_train_samples={TASK_SAMPLES[task]}"] if task in TASK_SAMPLES else []
    return [sys.executable, "-m", "trimformer", "run", "--task", task, "--glue-dir", glue_dir, "--recipe", "default",
            "--output-dir", str(out), *PROTOCOL, *samples]


def shared_finetune(task: str, glue_dir: str, work: Path) -> Path:
    """The task's fine-tuned model and teacher logits, made once."""
    out = work / task / "finetune"
    if not (out / "stages" / "finetune" / "done.json").is_file():
        run([*base_cmd(task, glue_dir, out), "--stop-after", "finetune", *(["--resume"] if out.exists() else [])])
    return out


def one_point(task: str, method: str, value: float, glue_dir: str, work: Path,
              stop_after: str | None = None) -> dict | None:
    """Run one (task, method, point) from the shared fine-tune; return its result row (None when
    `stop_after` ends the run early, e.g. to see the heads a regular_scale keeps)."""
    shared = shared_finetune(task, glue_dir, work)
    out = work / task / f"{method}-{value:g}"
    if not (out / "stages" / "finetune" / "done.json").is_file():
        shutil.rmtree(out, ignore_errors=True)
        (out / "stages").mkdir(parents=True)
        shutil.copytree(shared / "stages" / "finetune", out / "stages" / "finetune")
        shutil.copy(shared / "teacher_logits.safetensors", out / "teacher_logits.safetensors")
    flags, overrides = method_overrides(method, value)
    cmd = [*base_cmd(task, glue_dir, out), "--resume", *flags, *overrides]
    # One latency calibration per target, shared by every task (the shapes depend on the model only).
    shared_target = work / "targets" / f"x{value:g}.json"
    if method in TARGET_METHODS and shared_target.is_file() and not (out / "target.json").is_file():
        shutil.copy(shared_target, out / "target.json")
    start = time.perf_counter()
    if stop_after is not None:
        run([*cmd, "--stop-after", stop_after])
        done = json.loads((out / "stages" / stop_after / "done.json").read_text())
        print(json.dumps({"task": task, "method": method, "value": value, "stage": stop_after, **done}))
        return None
    run(cmd)
    if method in TARGET_METHODS and not shared_target.is_file():
        shared_target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(out / "target.json", shared_target)
    report = json.loads((out / "report.json").read_text())
    main = report["main_metric"]
    dense, pruned = report["dense_metrics"][main], report["pruned_metrics"][main]
    return {"task": task, "method": method, "sweep": {"target_speedup" if method in TARGET_METHODS else
                                                      "regular_scale": value},
            "main_metric": main, "dense_metric": dense, "pruned_metric": pruned, "drop": 100 * (dense - pruned),
            "total_sparsity": report["total_sparsity"], "flops_ratio": report["flops_ratio"],
            "speedup": report["speedup"], "heads_per_layer": report["heads_per_layer"],
            "ffn_per_layer": report["ffn_per_layer"], "seconds": time.perf_counter() - start,
            "command": " ".join(str(c) for c in cmd).replace(sys.executable, "python")}


def remeasure(work: Path, repeats: int) -> None:
    """Time every finished point again on a quiet machine (dense and pruned interleaved in one process)
    and store it as `speedup`; the figure taken at the end of the run stays as `speedup_at_run`."""
    from trimformer.bench import compare_latency
    from trimformer.io import load_pruned

    for path in sorted(RESULTS.glob("*-*-*.json")):
        row = json.loads(path.read_text())
        value = next(iter(row["sweep"].values()))
        out = work / row["task"] / f"{row['method']}-{value:g}"
        if not (out / "model").is_dir():
            print(f"skip {path.name}: {out / 'model'} is not here")
            continue
        result = compare_latency(load_pruned(out / "stages" / "finetune" / "model"), load_pruned(out / "model"),
                                 32, 128, warmup=3, repeats=repeats)
        row.setdefault("speedup_at_run", row["speedup"])
        row["speedup"] = result.speedup
        row["speedup_command"] = f"python bench/frontier.py --remeasure --repeats {repeats}"
        row["load_average"] = os.getloadavg()[0]
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(row, indent=2))
        os.replace(tmp, path)
        print(f"{path.name}: x{row['speedup_at_run']:.2f} at run, x{result.speedup:.2f} now")


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
    keys = sorted({(r["method"], r["sweep"]["target_speedup"]) for r in rows if r["method"] in TARGET_METHODS})
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
        summary.append(f"| {method} | x{target:g} | {len(ours)} | {sum(r['speedup'] for r in ours) / len(ours):.2f}x "
                       f"| {mean:+.2f} | {'n/a' if goal is None else f'<= {goal:g}'} | "
                       f"{'n/a' if goal is None else ('met' if mean <= goal else 'not met')} | "
                       f"{sum(ahead)} of {len(ahead)} |")
    lines += ["", "## Goal check (mean over the tasks run so far)", "",
              "| method | target | tasks | mean speedup | mean drop | goal | | ahead of the tutorial |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |", *summary]
    return lines


def write_summary() -> None:
    """Combined table (Markdown) and plot (PNG) over every result JSON."""
    rows = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))]
    lines = ["| task | method | sweep | dense | pruned | drop (points) | speedup | FLOPs ratio | sparsity |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in sorted(rows, key=lambda r: (r["task"], r["method"], r["speedup"])):
        sweep = ", ".join(f"{k}={v:g}" for k, v in r["sweep"].items())
        lines.append(f"| {r['task']} | {r['method']} | {sweep} | {r['dense_metric']:.4f} "
                     f"| {r['pruned_metric']:.4f} | {r['drop']:+.2f} | {r['speedup']:.2f}x "
                     f"| {r['flops_ratio']:.2f}x | {r['total_sparsity']:.1%} |")
    protocol = ("Packaged all-MiniLM-L6-v2; fine-tune 3 epochs once per task; per point an attention epoch "
                "(warm-up 0.25, cool-down from 0.75), a distillation epoch and an FFN epoch of 12 Taylor rounds; "
                "batch 32, length 128, lr 3e-5, seed 1024; SST-2 on its first 10,000 training rows; full dev sets. "
                "Drop = dense minus pruned main metric, in points. Speedup = dense vs pruned CPU latency at "
                "32 x 128, interleaved in one process (`speedup_at_run` when a point was re-timed with "
                "`--remeasure`). Methods and commands: `bench/frontier.py` and each JSON's `command`.")
    text = ("# Frontier\n\n" + protocol + "\n\n" + "\n".join(lines) + "\n\n" + "\n".join(comparison_lines(rows))
            + "\n")
    (RESULTS / "frontier.md").write_text(text)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    tasks = sorted({r["task"] for r in rows})
    styles = {"trimformer": ("o", "-"), "tutorial": ("s", "--"), "target": ("^", ":"), "global": ("D", ":"),
              "hidden": ("v", ":")}
    for (task, method), group in sorted(_groups(rows).items()):
        group.sort(key=lambda r: r["speedup"])
        marker, line = styles.get(method, ("x", ":"))
        ax.plot([r["speedup"] for r in group], [r["drop"] for r in group], marker=marker, linestyle=line,
                color=f"C{tasks.index(task)}", label=f"{task} {method}")
    ax.set_xlabel("measured CPU speedup (x)")
    ax.set_ylabel("metric drop (points, lower is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "frontier.png", dpi=110)


def _groups(rows: list[dict]) -> dict[tuple[str, str], list[dict]]:
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["method"]), []).append(r)
    return groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["mrpc", "stsb", "rte", "cola", "sst2"])
    parser.add_argument("--points", nargs="+", type=float, default=[2.0, 3.0, 5.0], help="trimformer target speedups")
    parser.add_argument("--scales", nargs="+", type=float, default=[5.0, 10.0, 20.0, 30.0],
                        help="tutorial regular_scale values")
    parser.add_argument("--methods", nargs="+", default=["tutorial", "trimformer"])
    parser.add_argument("--glue-dir", default=str(ROOT.parent / "shared" / "glue"))
    parser.add_argument("--work", default=str(ROOT / "runs" / "frontier"))
    parser.add_argument("--stop-after", choices=["attention", "heads", "distil"],
                        help="stop each run after this stage and write no result (a quick look at a sweep)")
    parser.add_argument("--remeasure", action="store_true", help="only re-time the finished points")
    parser.add_argument("--repeats", type=int, default=20, help="timed passes per model with --remeasure")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.remeasure:
        remeasure(Path(args.work), args.repeats)
        write_summary()
        return
    for task in args.tasks:
        for method in args.methods:
            for value in args.points if method in TARGET_METHODS else args.scales:
                path = RESULTS / f"{task}-{method}-{value:g}.json"
                if path.is_file():
                    continue
                row = one_point(task, method, value, args.glue_dir, Path(args.work), args.stop_after)
                if row is None:
                    continue
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps(row, indent=2))
                os.replace(tmp, path)
                print(json.dumps(row))
                write_summary()
    write_summary()


if __name__ == "__main__":
    main()
