"""Pruning to a latency target measured on a GPU, and `trimformer bench` there: the GPU timing path end to end.

    python bench/gpu_latency_check.py --model DIR --out results.json [--targets 3 2] [--batch-size 32]

On a CUDA machine (the `device` tool's), for each target speedup: `choose_shape` fits the uniform
shape (FFN widths a multiple of 64) by timing candidate shapes against the dense model under bf16
autocast and `torch.compile` (CUDA graphs), then the chosen shape is re-timed against the dense
model in a fresh comparison (its own compile, more repeats): how far that lands from the target is
the check. A target out of reach is recorded with `choose_shape`'s refusal, and the smallest
shape (1 head, FFN 64 a layer) is timed in its place. The same shape is also timed eagerly (bf16,
no compile), which on a GPU is launch-bound, so the gap says why GPU speedups are timed compiled.
Once, on the first target's shape, the shape is saved with `save_pruned` and timed through the
command line (`trimformer bench --device cuda --bf16 --compile`), so the CLI path runs too. Each
finished step is written to --out at once (a time limit keeps what was done). The weights are the
dense model's, loaded as float32 (timing only needs the shapes).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

import torch
import transformers

from trimformer.bench import compare_latency
from trimformer.io import save_pruned, write_json
from trimformer.target import TargetOutOfReach, choose_shape, shaped_copy


def cli_bench(dense: torch.nn.Module, heads: int, ffn: int, timing: dict, repeats: int) -> dict:
    """Save the shape with `save_pruned` and time it through `trimformer bench` on `device`."""
    with tempfile.TemporaryDirectory() as folder:
        save_pruned(shaped_copy(dense, heads, ffn), folder)
        cmd = [sys.executable, "-m", "trimformer", "bench", folder, "--device", timing["device"], "--bf16",
               "--compile", "--repeats", str(repeats), "--warmup", "3", "--batch-size", str(timing["batch_size"]),
               "--seq-len", str(timing["seq_len"])]
        proc = subprocess.run(cmd, capture_output=True, text=True)
    cli = {"command": " ".join(cmd[1:]), "rc": proc.returncode}
    if proc.returncode == 0 and "{" in proc.stdout:
        cli["output"] = json.loads(proc.stdout[proc.stdout.index("{"):])
    else:
        cli["stdout_tail"], cli["stderr_tail"] = proc.stdout[-1000:], proc.stderr[-3000:]
    return cli


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="the dense model folder")
    parser.add_argument("--out", required=True)
    parser.add_argument("--targets", type=float, nargs="+", default=[3.0, 2.0])
    parser.add_argument("--repeats", type=int, default=30, help="timed forwards per model while fitting")
    parser.add_argument("--check-repeats", type=int, default=100, help="timed forwards per model in the re-check")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--budget", type=float, default=240, help="seconds; no new step starts after this")
    args = parser.parse_args()
    start = time.time()
    dense = transformers.AutoModelForSequenceClassification.from_pretrained(args.model, dtype=torch.float32).eval()
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    result: dict = {"command": " ".join(["python", *sys.argv]), "device": args.device, "gpu": gpu,
                    "torch": torch.__version__, "transformers": transformers.__version__,
                    "batch_size": args.batch_size, "seq_len": args.seq_len, "bf16": True, "ffn_multiple": 64,
                    "targets": []}
    timing = {"batch_size": args.batch_size, "seq_len": args.seq_len, "device": args.device, "bf16": True}
    for target in args.targets:
        if time.time() - start > args.budget:
            break
        t0 = time.time()
        try:
            choice = choose_shape(dense, target, repeats=args.repeats, ffn_multiple=64, compile=True, **timing)
            heads, ffn, fitted = choice.heads, choice.ffn, {"fit_speedup": choice.measured_speedup,
                                                            "calibration": choice.calibration}
        except TargetOutOfReach as err:  # what the refusal says, and the smallest shape timed as below
            heads, ffn, fitted = 1, 64, {"refused": str(err)}
        shaped = shaped_copy(dense, heads, ffn)
        compiled = compare_latency(dense, shaped, warmup=3, repeats=args.check_repeats, compile=True, **timing)
        eager = compare_latency(dense, shaped, warmup=3, repeats=args.check_repeats, compile=False, **timing)
        result["targets"].append({
            "target": target, "heads": heads, "ffn": ffn, **fitted,
            "check_speedup_compiled": compiled.speedup,
            "check_off_target_pct": 100 * (compiled.speedup / target - 1),
            "check_latency_ms": {"dense": 1e3 * compiled.reference.median_s,
                                 "shaped": 1e3 * compiled.candidate.median_s},
            "eager_speedup": eager.speedup,
            "eager_latency_ms": {"dense": 1e3 * eager.reference.median_s, "shaped": 1e3 * eager.candidate.median_s},
            "seconds": time.time() - t0})
        write_json(args.out, result)
        print(json.dumps(result["targets"][-1]), flush=True)
        if "cli" not in result:  # the command line once, on the first shape
            result["cli"] = cli_bench(dense, heads, ffn, timing, args.check_repeats)
            write_json(args.out, result)
            print(json.dumps(result["cli"]), flush=True)
    result["seconds"] = time.time() - start
    write_json(args.out, result)


if __name__ == "__main__":
    main()
