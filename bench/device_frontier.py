"""The whole frontier on one GPU: many points at once, in priority order, until a deadline.

    python bench/device_frontier.py --model DIR --glue-dir DIR --out results.tar.gz [--slots 12] [--deadline 520]

The same harness and protocol as `bench/frontier.py` (every point is one `frontier.py` call, so its
JSON and `command` are what a CPU run writes), with three differences that only change where and
how fast points are trained: bf16 autocast, several points training at once (a MiniLM step at
batch 32 leaves a GPU mostly idle, so a dozen processes share it well), and no mid-stage
checkpoints. Speedups taken at the end of each run are not used: they are re-timed afterwards on
the CPU from each point's model/config.json (`frontier.py --remeasure`).

A short smoke sweep (every stage of each method on a few hundred rows) runs beside the fine-tunes
and stops everything at once if it fails, so a broken GPU path costs seconds, not the budget.
Everything finished by the deadline is packed into one archive: result JSONs, each point's
report, target, stage records and model config, and the logs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from frontier import SAME_UNTIL, TARGET_METHODS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TASKS = ["mrpc", "stsb", "rte", "cola", "sst2"]
# (method, values) in priority order: both methods' three points first, then `calibrated` (queued
# after them, so each starts from its trimformer point's distil stage when that has finished) and
# `taylor`, then more of the tutorial's sweep. (The `layerwise` and `hidden` ablations were measured
# in the first GPU frontier, kept in bench/results/frontier-run1.)
PRIORITY = [("trimformer", [2, 3, 5]), ("tutorial", [0, 1, 5]), ("calibrated", [2, 3, 5]), ("taylor", [2, 3, 5]),
            ("tutorial", [2, 10, 3])]
# No mid-stage checkpoints (a stage is seconds here) and a token at-run timing at 4 x 32 (every point is
# re-timed at 32 x 128 on the CPU afterwards).
DEVICE_OVERRIDES = ["checkpoint_every=1000000", "bench.repeats=2", "bench.warmup=1", "bench.threads=1",
                    "bench.batch_size=4", "bench.seq_len=32"]
SMOKE_OVERRIDES = ["max_train_samples=384", "max_eval_samples=64"]


class Job:
    """One `frontier.py` call running in its own process group, logging to a file."""

    def __init__(self, name: str, args: list[str], log: Path):
        self.name, self.log, self.start = name, log, time.time()
        cmd = [sys.executable, str(ROOT / "bench" / "frontier.py"), *args]
        with open(log, "w") as handle:
            handle.write(" ".join(cmd) + "\n")
            handle.flush()
            self.proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)

    def poll(self) -> int | None:
        return self.proc.poll()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)


def common_args(args: argparse.Namespace, work: Path, results: Path) -> list[str]:
    return ["--glue-dir", args.glue_dir, "--model", args.model, "--bf16", "--machine", args.machine,
            "--work", str(work), "--results", str(results)]


def gpu_load() -> str:
    """Utilisation and memory in use, as nvidia-smi reads them (empty without one)."""
    if shutil.which("nvidia-smi") is None:
        return ""
    query = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader"]
    return subprocess.run(query, capture_output=True, text=True).stdout.strip()


def tail(path: Path, lines: int = 25) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def drop_weights(folder: Path) -> None:
    """A finished point keeps its records and config; its weights are not needed (and fill the disk)."""
    for path in folder.rglob("*.safetensors"):
        path.unlink()


def point_finished(work: Path, task: str, method: str, value: str) -> None:
    """Drop a finished point's weights, except where another method starts from its stages
    (`frontier.SAME_UNTIL`: a `calibrated` point branches from its `trimformer` point's distil stage)."""
    if method not in {source for source, _ in SAME_UNTIL.values()}:
        drop_weights(work / task / f"{method}-{value}")


def pack(out: Path, work: Path, results: Path, logs: Path) -> None:
    keep = ("report.json", "target.json", "done.json", "config.json", "plan.json")
    with tarfile.open(out, "w:gz") as tar:
        for path in sorted(results.glob("*.json")):
            tar.add(path, f"results/{path.name}")
        for path in sorted(work.rglob("*")):
            if path.is_file() and path.name in keep and "checkpoint" not in path.parts:
                tar.add(path, f"work/{path.relative_to(work)}")
        for path in sorted(logs.glob("*.log")):
            tar.add(path, f"logs/{path.name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--glue-dir", required=True)
    parser.add_argument("--out", required=True, help="the archive to write")
    parser.add_argument("--targets", default=str(ROOT / "bench" / "results" / "frontier_targets"),
                        help="latency-target shapes measured on the CPU that times the points")
    parser.add_argument("--work", default="/tmp/frontier")
    parser.add_argument("--slots", type=int, default=12, help="points training at once")
    parser.add_argument("--deadline", type=float, default=520, help="seconds until everything is stopped and packed")
    parser.add_argument("--machine", default="GPU")
    parser.add_argument("--tasks", nargs="+", default=TASKS)
    parser.add_argument("--extra", nargs="+", default=[], help="overrides for every run (a quick dry run on a CPU)")
    parser.add_argument("--methods", nargs="+",
                        help="only these target-speedup methods, at x2, x3 and x5 (default: PRIORITY)")
    args = parser.parse_args()
    start = time.time()
    work, results, logs = Path(args.work), Path(args.work) / "results", Path(args.work) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    shutil.copytree(args.targets, work / "targets", dirs_exist_ok=True)
    smoke_work = work / "smoke"
    shutil.copytree(args.targets, smoke_work / "targets", dirs_exist_ok=True)
    if args.methods and not set(args.methods) <= set(TARGET_METHODS):
        parser.error(f"--methods takes methods swept by target speedup: {sorted(TARGET_METHODS)}")
    # The smoke run tries every method this call will run (a typo in a new method fails in seconds).
    smoke_methods = args.methods or ["tutorial", "trimformer", "calibrated", "taylor"]
    smoke = Job("smoke", [*common_args(args, smoke_work, smoke_work / "results"), "--tasks", "rte", "--methods",
                          *smoke_methods, "--scales", "1", "--points", "3",
                          "--override", *DEVICE_OVERRIDES, *SMOKE_OVERRIDES, *args.extra], logs / "smoke.log")
    overrides = [*DEVICE_OVERRIDES, *args.extra]
    finetunes = {t: Job(f"{t}-finetune", [*common_args(args, work, results), "--tasks", t, "--stop-after", "finetune",
                                          "--override", *overrides], logs / f"{t}-finetune.log") for t in args.tasks}
    priority = [(m, [2, 3, 5]) for m in args.methods] if args.methods else PRIORITY
    queue = [(t, m, v) for m, values in priority for v in values for t in args.tasks]
    running: dict[str, Job] = {}
    done, failed, last_print = [], [], 0.0
    while True:
        now = time.time() - start
        if smoke is not None and smoke.poll() is not None:
            if smoke.poll() != 0:  # everything still running is killed below
                print(f"SMOKE FAILED after {now:.0f}s:\n{tail(smoke.log, 60)}", flush=True)
                break
            print(f"smoke passed at {now:.0f}s", flush=True)
            smoke = None
        for name, job in list(running.items()):
            rc = job.poll()
            if rc is not None:
                (done if rc == 0 else failed).append(name)
                if rc != 0:
                    print(f"FAILED {name}:\n{tail(job.log)}", flush=True)
                point_finished(work, *name.split(":"))
                del running[name]
        ready = {t for t, job in finetunes.items() if job.poll() == 0}
        for t, job in finetunes.items():
            if job.poll() not in (None, 0) and f"{t}-finetune" not in failed:
                failed.append(f"{t}-finetune")
                print(f"FAILED {t} finetune:\n{tail(job.log)}", flush=True)
        while len(running) < args.slots:
            pick = next((item for item in queue if item[0] in ready), None)
            if pick is None:
                break
            queue.remove(pick)
            task, method, value = pick
            name = f"{task}:{method}:{value:g}"
            values = ["--scales" if method == "tutorial" else "--points", str(value)]
            log = logs / f"{name.replace(':', '-')}.log"
            running[name] = Job(name, [*common_args(args, work, results), "--tasks", task, "--methods", method,
                                       *values, "--override", *overrides], log)
        finished = (not running and all(j.poll() is not None for j in finetunes.values())
                    and not any(item[0] in ready for item in queue))
        if now > args.deadline or (finished and smoke is None):
            break
        if now - last_print > 30:
            last_print = now
            print(f"[{now:4.0f}s] done {len(done)} running {len(running)} queued {len(queue)} failed {len(failed)} "
                  f"gpu {gpu_load()}", flush=True)
        time.sleep(1)
    for job in [*finetunes.values(), *running.values(), *([smoke] if smoke else [])]:
        job.kill()
    print(f"stopped at {time.time() - start:.0f}s: done {done}\nunfinished {sorted(running)}\nfailed {failed}\n"
          f"never started {len(queue)}", flush=True)
    pack(Path(args.out), work, results, logs)


if __name__ == "__main__":
    main()
