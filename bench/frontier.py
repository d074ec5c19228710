"""Accuracy/speedup frontier: the NNI tutorial's method vs trimformer's, same protocol, same machine.

    python bench/frontier.py [--tasks mrpc stsb rte cola sst2] [--points 2 3 5] [--scales 5 10 20 30]
                             [--methods tutorial trimformer] [--glue-dir ../shared/glue] [--work runs/frontier]

Protocol (shared by every method, written into every result): the packaged MiniLM; fine-tune 3
epochs once per task (shared by all points and methods, with its teacher logits); then per point:
attention phase 1 epoch (warm-up 0.25, cool-down from 0.75), distil 1 epoch, FFN phase of 12 Taylor
rounds over 1 epoch, no final distil; batch 32; max length 128; lr 3e-5; seed 1024. SST-2 uses its
first 10,000 training rows, the other tasks all of theirs; dev sets in full. Speedup: measured CPU
latency, dense vs pruned, 32 x 128, interleaved in one process.

Methods:
  tutorial   - soft movement on per-head blocks (swept by regular_scale), a head removed only when all
               its blocks are masked, partly masked heads restored, the tutorial's FFN rule (keep half
               as much FFN as the layer kept heads)
  trimformer - `--target-speedup P`: heads and FFN sizes chosen from measured latency, hard movement
               on whole heads (q, k, v, o together), coupled Taylor FFN channels, distillation

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


def method_overrides(method: str, value: float) -> tuple[list[str], list[str]]:
    """(CLI flags, recipe overrides) for one point of one method."""
    if method == "trimformer":
        return ["--target-speedup", str(value)], []
    return [], ["attention.mode=soft", "attention.granularity=auto", f"attention.regular_scale={value}",
                "heads.restore_partial=true", "ffn.rule=tutorial"]


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


def one_point(task: str, method: str, value: float, glue_dir: str, work: Path) -> dict:
    """Run one (task, method, point) from the shared fine-tune; return its result row."""
    shared = shared_finetune(task, glue_dir, work)
    out = work / task / f"{method}-{value:g}"
    if not (out / "stages" / "finetune" / "done.json").is_file():
        shutil.rmtree(out, ignore_errors=True)
        (out / "stages").mkdir(parents=True)
        shutil.copytree(shared / "stages" / "finetune", out / "stages" / "finetune")
        shutil.copy(shared / "teacher_logits.safetensors", out / "teacher_logits.safetensors")
    flags, overrides = method_overrides(method, value)
    cmd = [*base_cmd(task, glue_dir, out), "--resume", *flags, *overrides]
    start = time.perf_counter()
    run(cmd)
    report = json.loads((out / "report.json").read_text())
    main = report["main_metric"]
    dense, pruned = report["dense_metrics"][main], report["pruned_metrics"][main]
    return {"task": task, "method": method, "sweep": {"target_speedup" if method == "trimformer" else
                                                      "regular_scale": value},
            "main_metric": main, "dense_metric": dense, "pruned_metric": pruned, "drop": 100 * (dense - pruned),
            "total_sparsity": report["total_sparsity"], "flops_ratio": report["flops_ratio"],
            "speedup": report["speedup"], "heads_per_layer": report["heads_per_layer"],
            "ffn_per_layer": report["ffn_per_layer"], "seconds": time.perf_counter() - start,
            "command": " ".join(str(c) for c in cmd).replace(sys.executable, "python")}


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
    (RESULTS / "frontier.md").write_text("# Frontier\n\n" + "\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (task, method), group in _groups(rows).items():
        group.sort(key=lambda r: r["speedup"])
        ax.plot([r["speedup"] for r in group], [r["drop"] for r in group], marker="o" if method == "trimformer"
                else "s", linestyle="-" if method == "trimformer" else "--", label=f"{task} {method}")
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
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    for task in args.tasks:
        for method in args.methods:
            for value in args.points if method == "trimformer" else args.scales:
                path = RESULTS / f"{task}-{method}-{value:g}.json"
                if path.is_file():
                    continue
                row = one_point(task, method, value, args.glue_dir, Path(args.work))
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps(row, indent=2))
                os.replace(tmp, path)
                print(json.dumps(row))
                write_summary()
    write_summary()


if __name__ == "__main__":
    main()
