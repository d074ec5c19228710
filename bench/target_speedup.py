"""Does `trimformer run --target-speedup S` land within 10% of S on measured CPU latency?

Runs the pipeline with the `smoke` recipe (few training steps: latency depends on the shape,
not on how long it trained) on the packaged MiniLM and real SST-2, for each target, and
reads the speedup the report measured (dense vs pruned at 32 x 128, interleaved, one process; the
median of the report's `bench.passes` timings, each pass recorded).

    python bench/target_speedup.py [--targets 2 3] [--glue-dir ../shared/glue] [--head-ratio 2] [--out FILE]

With `--head-ratio R` (recipe `target.head_ratio`) the results go to target_speedup_heads<R>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from trimformer.io import write_json

RESULTS = Path(__file__).resolve().parent / "results" / "target_speedup.json"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--targets", type=float, nargs="+", default=[2.0, 3.0])
    parser.add_argument("--glue-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "glue"))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--head-ratio", type=float, default=1.0, help="target.head_ratio for every run")
    parser.add_argument("--out", type=Path, help="where the JSON goes (default: results/target_speedup*.json)")
    args = parser.parse_args()
    results = RESULTS if args.head_ratio == 1.0 else RESULTS.with_name(f"target_speedup_heads{args.head_ratio:g}.json")
    results = args.out or results
    rows = []
    for target in args.targets:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "run"
            cmd = [sys.executable, "-m", "trimformer", "run", "--recipe", "smoke", "--task", "sst2",
                   "--glue-dir", args.glue_dir, "--output-dir", str(out), "--target-speedup", str(target),
                   "bench.batch_size=32", "bench.seq_len=128", f"bench.repeats={args.repeats}", "bench.warmup=2",
                   f"target.head_ratio={args.head_ratio:g}"]
            start = time.perf_counter()
            subprocess.run(cmd, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True)
            report = json.loads((out / "report.json").read_text())
            choice = json.loads((out / "target.json").read_text())
        achieved = report["speedup"]
        rows.append({"target": target, "achieved_speedup": achieved, "ratio": achieved / target,
                     "within_10pct": abs(achieved / target - 1) <= 0.10, "heads_per_layer": report["heads_per_layer"],
                     "ffn_per_layer": report["ffn_per_layer"], "flops_ratio": report["flops_ratio"],
                     "speedup_passes": report["extra"].get("speedup_passes"),
                     "calibration": choice["calibration"], "calibrated_speedup": choice["measured_speedup"],
                     "seconds": time.perf_counter() - start})
        print(json.dumps(rows[-1]))
    result = {"command": "python bench/target_speedup.py " + " ".join(sys.argv[1:]), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "batch": 32, "seq_len": 128, "model": "packaged all-MiniLM-L6-v2",
              "load_average": os.getloadavg(), "runs": rows}
    write_json(results, result)


if __name__ == "__main__":
    main()
