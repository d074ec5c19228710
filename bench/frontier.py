"""Accuracy/speedup frontier: the NNI tutorial's method vs trimformer's, same protocol, same machine.

    python bench/frontier.py [--tasks mrpc stsb rte cola sst2] [--points 2 3 5] [--scales 0 1 5]
                             [--methods tutorial trimformer] [--glue-dir ../shared/glue] [--work runs/frontier]
                             [--model DIR] [--bf16] [--machine TEXT] [--override key=value ...]
    python bench/frontier.py --remeasure [--repeats 20]   # re-time every finished point, quietly
    python bench/frontier.py --summary                    # rewrite frontier.md and frontier.png
    python bench/device_frontier.py ...                   # the whole sweep on one GPU, many points at once

Protocol (shared by every method, written into every result): the packaged MiniLM; fine-tune 3
epochs once per task (shared by all points and methods, with its teacher logits; its best epoch end
chosen on dev); then per point: attention phase 1 epoch (warm-up 0.25, cool-down from 0.75), distil
1 epoch, FFN phase of 12 Taylor rounds over 1 epoch, no final distil (each point's weights are its
stages' last, nothing chosen); batch 32; max length 128; lr 3e-5; seed 1024. SST-2 uses its
first 10,000 training rows, the other tasks all of theirs; dev sets in full. Speedup: measured CPU
latency, dense vs pruned, 32 x 128, interleaved in one process.

Methods: `tutorial` (NNI's recipe: soft movement on per-head blocks swept by regular_scale, heads
cut from the fine-tuned weights, the tutorial's FFN rule) and the target methods of TARGET_METHODS
below, each `--target-speedup P` plus a list of recipe switches that adds to an earlier one
(`taylor_reg` is what `--recipe trimformer` runs; `<method>_s1025` / `_s1026` seed the stages after
the shared fine-tune differently). What each switch does, why it was tried and where it was
measured: bench/results/frontier/README.md, "The methods".

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
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from frontier_report import remeasure, write_summary  # noqa: E402

from trimformer.io import write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROTOCOL = ["finetune.epochs=3", "finetune.lr=3e-5", "finetune.warmup_ratio=0", "attention.epochs=1",
            "attention.lr=3e-5", "attention.warm_up=0.25", "attention.cool_down=0.75", "distil.epochs=1",
            "distil.lr=3e-5", "ffn.epochs=1", "ffn.rounds=12", "ffn.lr=3e-5", "final_distil.enabled=false",
            "train_batch_size=32", "max_seq_length=128", "seed=1024", "max_train_samples=null",
            "finetune.eval_every=null", "distil.eval_every=null", "bench.batch_size=32", "bench.seq_len=128",
            "bench.repeats=10", "ffn.multiple=1",  # any FFN width, as every point before ffn.multiple had
            "select_rows=0"]  # the fine-tune's best epoch end chosen on dev, as for every point before select_rows
TASK_SAMPLES = {"sst2": 10000}
# The tutorial's method as NNI ran it: soft movement on per-head blocks, scores trained by Adam at
# 1e-2, blocks kept above a threshold ramping to 0.1, a head removed when its value rows are masked,
# heads cut from the fine-tuned weights, the FFN kept at half the heads' keep ratio.
TUTORIAL = ["attention.mode=soft", "attention.granularity=auto", "attention.score_optimizer=adam",
            "attention.score_lr=0.01", "attention.threshold=0.1", "heads.rule=value", "heads.source=finetune",
            "heads.restore_partial=true", "ffn.rule=tutorial"]
# trimformer's method on top of `--target-speedup`: heads and FFN channels allocated across layers by
# one ranking each (same totals as the latency target's shape), KD during the attention epoch, heads
# cut from the weights trained under the masks (not the fine-tuned ones), and the last quarter of the
# FFN epoch trained at the final width. Chosen as the best of the methods measured on STS-B on the CPU
# (bench/results/frontier-cpu), before the five-task frontier.
LAYERWISE = ["attention.distill=true", "heads.source=attention", "ffn.recover=0.25"]
TRIMFORMER = [*LAYERWISE, "attention.allocation=global", "ffn.allocation=global"]
# The other methods: each adds switches to one before it. What each switch does, why it was tried and
# where it was measured (CPU pairs first, then the GPU frontier): bench/results/frontier/README.md,
# "The methods". (`ffn.compensate=lstsq`, a least-squares re-fit before each FFN cut, lost 9 points on
# STS-B in CPU pairs, bench/results/compensate-cpu, so it is not a method here.)
RECOVER_FULL_LR = "ffn.recover_lr=3e-5"
CALIBRATED = [*TRIMFORMER, RECOVER_FULL_LR, "ffn.calibrate_rows=8192"]
TAYLOR = [*CALIBRATED, "attention.score=taylor"]
TAYLOR_REG = [*TAYLOR, "distill_regression=false"]
TAYLOR_DEC = [*TAYLOR_REG, "attention.taylor_decay=0.97"]
TAYLOR_CHAN = [*TAYLOR_DEC, "ffn.score=channel"]
TAYLOR_RA5 = [*TAYLOR_REG, "distil.alpha=0.5", "ffn.alpha=0.5"]
HIDDEN = ["attention.hidden_distill=1", "distil.hidden_distill=1", "ffn.hidden_distill=1"]
TARGET_METHODS = {"trimformer": TRIMFORMER, "layerwise": LAYERWISE, "target": [],
                  "hidden": [*TRIMFORMER, *HIDDEN],
                  "calibrated": CALIBRATED, "taylor": TAYLOR,
                  "taylor_uncal": [*TRIMFORMER, RECOVER_FULL_LR, "attention.score=taylor"],
                  "taylor_heads2": [*TAYLOR, "target.head_ratio=2"],
                  "taylor_alpha5": [*TAYLOR, "distil.alpha=0.5", "ffn.alpha=0.5"],
                  "taylor_reg": TAYLOR_REG,
                  "taylor_layer": [*TAYLOR_REG, "attention.allocation=layer"],
                  "taylor_dec": TAYLOR_DEC, "taylor_chan": TAYLOR_CHAN,
                  "taylor_out": [*TAYLOR_CHAN, "attention.taylor_blocks=output"],
                  "taylor_chl": [*TAYLOR_CHAN, "attention.allocation=layer"],
                  "taylor_ra5": TAYLOR_RA5,
                  "taylor_hid": [*TAYLOR_RA5, *HIDDEN],
                  "taylor_kd": [*TAYLOR_REG, "distil.alpha=0", "ffn.alpha=0"],
                  "taylor_rh2": [*TAYLOR_REG, "target.head_ratio=2"],
                  "taylor_avg": [*TAYLOR_REG, "distil.average=0.5", "ffn.average=0.5"],
                  "taylor_fade": [*TAYLOR_REG, "attention.fade_steps=30"],
                  "taylor_a16": [*TAYLOR_REG, "ffn.multiple=16"],
                  "taylor_rlr": [*TAYLOR_REG, "attention.recover_lr=3e-5"],
                  "taylor_hc": [*TAYLOR_REG, "heads.source=finetune", "heads.compensate=lstsq"],
                  "taylor_rf": [*TAYLOR_REG, "attention.compensate=lstsq"]}
# The same methods with the stages after the shared fine-tune seeded differently (data order, dropout):
# one CoLA point moves 3-4 MCC points from seed to seed, as much as most switches, so the top methods
# need a few seeds each before one is preferred (frontier.md then adds a table of means over seeds).
SEEDS = (1025, 1026)
TARGET_METHODS.update({f"{method}_s{seed}": [*TARGET_METHODS[method], f"seed={seed}"]
                       for method in ("taylor_reg", "taylor_ra5", "taylor_kd", "taylor_rh2", "taylor_avg",
                                      "taylor_fade", "taylor_a16", "taylor_rlr", "taylor_hc", "taylor_rf")
                       for seed in SEEDS})
PROTOCOL_NOTE = ("Packaged all-MiniLM-L6-v2; fine-tune 3 epochs once per task; per point an attention epoch "
                 "(warm-up 0.25, cool-down from 0.75), a distillation epoch and an FFN epoch of 12 Taylor rounds; "
                 "batch 32, length 128, lr 3e-5, seed 1024; SST-2 on its first 10,000 training rows; full dev "
                 "sets. Drop = dense minus pruned main metric, in points. Speedup = dense vs pruned CPU latency "
                 "at 32 x 128, interleaved in one process, re-timed with `--remeasure` on a quiet machine "
                 "(`speedup_at_run`: the figure taken at the end of the run; on a GPU run a token timing at "
                 "4 x 32 on its busy CPU). Methods and commands: `bench/frontier.py` and each JSON's `command`.")


# Methods that differ from another one only after a stage start from that method's point once it
# has finished the stage: the same command up to there, so the same masks and weights, less work.
SAME_UNTIL = {"calibrated": ("trimformer", "distil"), "taylor_alpha5": ("taylor", "heads")}
STAGES = ["finetune", "attention", "heads", "distil", "ffn", "final_distil"]


def branch_dir(source: Path, target: Path, after: str) -> None:
    """Copy the parts of a run that the stages up to `after` made; nothing of the later ones."""
    if not (source / "stages" / after / "done.json").is_file():
        raise SystemExit(f"{source} has not finished stage {after!r}")
    shutil.rmtree(target, ignore_errors=True)
    (target / "stages").mkdir(parents=True)
    for stage in STAGES[: STAGES.index(after) + 1]:
        if (source / "stages" / stage).is_dir():
            shutil.copytree(source / "stages" / stage, target / "stages" / stage,
                            ignore=shutil.ignore_patterns("checkpoint", "*_checkpoint"))
    for name in ("target.json", "teacher_logits.safetensors", "data.json"):  # data.json: the rows it trained on
        if (source / name).is_file():
            shutil.copy(source / name, target / name)


def method_overrides(method: str, value: float) -> tuple[list[str], list[str]]:
    """(CLI flags, recipe overrides) for one point of one method."""
    if method in TARGET_METHODS:
        return ["--target-speedup", str(value)], TARGET_METHODS[method]
    return [], TUTORIAL + [f"attention.regular_scale={value}"]


@dataclass
class Harness:
    """Where a sweep reads and writes, and what every run of it adds to the protocol."""

    glue_dir: str
    work: Path
    run_flags: list[str] = field(default_factory=list)  # e.g. --model DIR --bf16 (the same for every run)
    overrides: list[str] = field(default_factory=list)  # recipe overrides after the protocol's and the method's
    machine: str = f"CPU ({os.cpu_count()} cores)"  # where the points are trained, recorded in each result


def run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL)


def base_cmd(task: str, harness: Harness, out: Path) -> list[str]:
    samples = [f"max_train_samples={TASK_SAMPLES[task]}"] if task in TASK_SAMPLES else []
    return [sys.executable, "-m", "trimformer", "run", "--task", task, "--glue-dir", harness.glue_dir, "--recipe",
            "default", "--output-dir", str(out), *harness.run_flags, *PROTOCOL, *samples]


def shared_finetune(task: str, harness: Harness) -> Path:
    """The task's fine-tuned model and teacher logits, made once."""
    out = harness.work / task / "finetune"
    if not (out / "stages" / "finetune" / "done.json").is_file():
        run([*base_cmd(task, harness, out), *harness.overrides, "--stop-after", "finetune",
             *(["--resume"] if out.exists() else [])])
    return out


def metric_fields(report: dict) -> dict:
    """A run report's main metric, dense and pruned, and the drop in points (positive = worse)."""
    main = report["main_metric"]
    dense, pruned = report["dense_metrics"][main], report["pruned_metrics"][main]
    return {"main_metric": main, "dense_metric": dense, "pruned_metric": pruned, "drop": 100 * (dense - pruned)}


def start_point(task: str, method: str, value: float, work: Path, shared: Path) -> Path:
    """The point's folder, ready to resume: new ones start from the shared fine-tune, or, for a
    method in SAME_UNTIL, from the other method's point where that has finished the stage."""
    out = work / task / f"{method}-{value:g}"
    source, stage = SAME_UNTIL.get(method, (None, None))
    if source and not out.exists() and (work / task / f"{source}-{value:g}" / "stages" / stage / "done.json").is_file():
        branch_dir(work / task / f"{source}-{value:g}", out, stage)
    if not (out / "stages" / "finetune" / "done.json").is_file():
        shutil.rmtree(out, ignore_errors=True)
        (out / "stages").mkdir(parents=True)
        shutil.copytree(shared / "stages" / "finetune", out / "stages" / "finetune")
        shutil.copy(shared / "teacher_logits.safetensors", out / "teacher_logits.safetensors")
        if (shared / "data.json").is_file():  # the rows the fine-tune trained on, which the point must too
            shutil.copy(shared / "data.json", out / "data.json")
    return out


def target_file(work: Path, value: float, overrides: list[str]) -> Path:
    """The latency calibration a target method's point starts from: one per target and FFN multiple,
    shared by every task (the shapes depend on the model only); widths on a multiple time faster, so
    they have their own line (`x3-m16.json` for `ffn.multiple=16`)."""
    multiple = next((o.split("=")[1] for o in reversed(overrides) if o.startswith("ffn.multiple=")), "1")
    if not multiple.isdigit():
        raise ValueError(f"the frontier harness needs a number for ffn.multiple, got {multiple!r}")
    return work / "targets" / (f"x{value:g}.json" if multiple == "1" else f"x{value:g}-m{multiple}.json")


def one_point(task: str, method: str, value: float, harness: Harness, stop_after: str | None = None) -> dict | None:
    """Run one (task, method, point) from the shared fine-tune; return its result row (None when
    `stop_after` ends the run early, e.g. to see the heads a regular_scale keeps)."""
    out = start_point(task, method, value, harness.work, shared_finetune(task, harness))
    work = harness.work
    flags, overrides = method_overrides(method, value)
    cmd = [*base_cmd(task, harness, out), "--resume", *flags, *overrides, *harness.overrides]
    shared_target = target_file(work, value, [*overrides, *harness.overrides])
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
    return {"task": task, "method": method, "sweep": {"target_speedup" if method in TARGET_METHODS else
                                                      "regular_scale": value},
            **metric_fields(report), "total_sparsity": report["total_sparsity"], "flops_ratio": report["flops_ratio"],
            "speedup": report["speedup"], "heads_per_layer": report["heads_per_layer"],
            "ffn_per_layer": report["ffn_per_layer"], "seconds": time.perf_counter() - start,
            "command": " ".join(str(c) for c in cmd).replace(sys.executable, "python"),
            "trained_on": harness.machine}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["mrpc", "stsb", "rte", "cola", "sst2"])
    parser.add_argument("--points", nargs="+", type=float, default=[2.0, 3.0, 5.0], help="trimformer target speedups")
    parser.add_argument("--scales", nargs="+", type=float, default=[0.0, 1.0, 5.0],
                        help="tutorial regular_scale values")
    parser.add_argument("--methods", nargs="+", default=["tutorial", "trimformer"])
    parser.add_argument("--glue-dir", default=str(ROOT.parent / "shared" / "glue"))
    parser.add_argument("--work", default=str(ROOT / "runs" / "frontier"))
    parser.add_argument("--results", default=str(ROOT / "bench" / "results" / "frontier"))
    parser.add_argument("--model", help="model folder (default: the packaged MiniLM)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast while training (GPUs)")
    parser.add_argument("--machine", help="where the points are trained, recorded in each result")
    parser.add_argument("--override", nargs="+", default=[], help="recipe key=value after the protocol's")
    parser.add_argument("--stop-after", choices=["finetune", "attention", "heads", "distil"],
                        help="stop each run after this stage and write no result (a quick look at a sweep)")
    parser.add_argument("--remeasure", action="store_true", help="only re-time the finished points")
    parser.add_argument("--summary", action="store_true", help="only rewrite the table and plot")
    parser.add_argument("--repeats", type=int, default=20, help="timed passes per model with --remeasure")
    args = parser.parse_args()
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    if args.remeasure or args.summary:
        if args.remeasure:
            remeasure(results, Path(args.work), args.repeats)
        write_summary(results, PROTOCOL_NOTE)
        return
    harness = Harness(args.glue_dir, Path(args.work), [*(["--model", args.model] if args.model else []),
                                                        *(["--bf16"] if args.bf16 else [])], args.override)
    if args.machine:
        harness.machine = args.machine
    for task in args.tasks:
        if args.stop_after == "finetune":
            shared_finetune(task, harness)
            continue
        for method in args.methods:
            for value in args.points if method in TARGET_METHODS else args.scales:
                path = results / f"{task}-{method}-{value:g}.json"
                if path.is_file():
                    continue
                row = one_point(task, method, value, harness, args.stop_after)
                if row is None:
                    continue
                write_json(path, row)
                print(json.dumps(row))
                write_summary(results, PROTOCOL_NOTE)
    write_summary(results, PROTOCOL_NOTE)


if __name__ == "__main__":
    main()
