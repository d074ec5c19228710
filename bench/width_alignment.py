"""Do odd FFN widths cost CPU time beyond their FLOPs?

`--target-speedup 2` on the CPU kept 843 FFN channels a layer and landed at x1.86 (x1.92 when the
search timed it, while a shape with 1.5% more FLOPs timed x2.12; bench/results/target_speedup_passes.json).
GPU matrix kernels want widths in multiples of 64; CPU GEMMs pack their operands in blocks too (8 or
16 floats a vector register), so a width just past a multiple may pay for a block it barely uses.
This times the packaged MiniLM's architecture (random weights: latency does not depend on the values)
with `--heads` heads in every layer and each FFN width of a sweep around `--center`, all against the
dense model in one process, repeats interleaved, `--passes` times; then fits latency against width
with a line and reports each width's distance from it, grouped by the width's largest power-of-two
divisor (up to 64): if alignment matters, the aligned widths sit below the line and the odd ones above.

    python bench/width_alignment.py [--heads 6] [--center 843] [--passes 3]   # ~2 minutes on 2 cores

With `--method M` it times instead each finished frontier point of method M (bench/results/frontier)
against the same point with its FFN widths moved to multiples of `--multiple` by `aligned_counts` (what
`ffn.multiple` now does to a global cut: the same total within half a multiple), both against the
dense model in one process, `--passes` times: what the alignment would have bought those points.

    python bench/width_alignment.py --method taylor_reg --multiple 16 --out bench/results/width_alignment_frontier.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import torch

from trimformer.allocate import aligned_counts
from trimformer.bench import time_models
from trimformer.io import write_json
from trimformer.target import shaped_copy

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from head_ratio_shapes import packaged_model  # noqa: E402


def alignment(width: int, cap: int = 64) -> int:
    """The largest power of two up to `cap` that divides `width`."""
    power = 1
    while power < cap and width % (power * 2) == 0:
        power *= 2
    return power


def sweep(center: int, span: int) -> list[int]:
    """Every width from the multiple of 32 below `center - span / 2` to the one above `center + span / 2`,
    in steps that mix odd, even and aligned widths (every third width, plus every multiple of 16)."""
    low, high = (center - span // 2) // 32 * 32, -(-(center + span // 2) // 32) * 32
    return sorted(set(range(low, high + 1, 3)) | set(range(low, high + 1, 16)) | {center})


def line_residuals(widths: list[int], latencies: list[float]) -> list[float]:
    """Each latency's distance from the least-squares line through all of them, as a fraction of the line."""
    mean_w, mean_l = statistics.fmean(widths), statistics.fmean(latencies)
    slope = (sum((w - mean_w) * (lat - mean_l) for w, lat in zip(widths, latencies, strict=True))
             / sum((w - mean_w) ** 2 for w in widths))
    return [lat / (mean_l + slope * (w - mean_w)) - 1 for w, lat in zip(widths, latencies, strict=True)]


def pass_speedups(models: tuple[torch.nn.Module, ...], passes: int, repeats: int) -> list[list[float]]:
    """The first model (dense) and the others timed together `passes` times at 32 x 128, repeats
    interleaved: each other model's speedup over the first, one per pass (drift between passes cancels)."""
    timings = [time_models(models, 32, 128, warmup=2, repeats=repeats) for _ in range(passes)]
    return [[t[0].median_s / t[i].median_s for t in timings] for i in range(1, len(models))]


def frontier_rows(method: str, multiple: int, passes: int, repeats: int, results: Path) -> list[dict]:
    """Each finished point of `method`: its speedup as trained and with its FFN widths aligned."""
    dense = packaged_model()
    rows = []
    for path in sorted(results.glob(f"*-{method}-*.json")):
        point = json.loads(path.read_text())
        heads, ffn = point["heads_per_layer"], point["ffn_per_layer"]
        aligned = aligned_counts(ffn, [dense.config.intermediate_size] * len(ffn), multiple)
        own, moved = pass_speedups((dense, shaped_copy(dense, heads, ffn), shaped_copy(dense, heads, aligned)),
                                   passes, repeats)
        row = {"task": point["task"], "target": point["sweep"].get("target_speedup"), "ffn": ffn,
               "ffn_aligned": aligned, "speedup": statistics.median(own), "speedup_aligned": statistics.median(moved)}
        row["gain"] = row["speedup_aligned"] / row["speedup"] - 1
        rows.append(row)
        print(f"{path.name}: x{row['speedup']:.2f} -> x{row['speedup_aligned']:.2f} ({row['gain']:+.1%}); "
              f"FFN {sum(ffn)} -> {sum(aligned)}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--center", type=int, default=843)
    parser.add_argument("--span", type=int, default=64)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--method", help="time this frontier method's points, own widths against aligned")
    parser.add_argument("--multiple", type=int, default=16)
    parser.add_argument("--results", type=Path, default=BENCH / "results" / "frontier")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "width_alignment.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    meta = {"command": "python bench/width_alignment.py " + " ".join(sys.argv[1:]), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "batch": 32, "seq_len": 128}
    if args.method:
        rows = frontier_rows(args.method, args.multiple, args.passes, args.repeats, args.results)
        gains = [r["gain"] for r in rows]
        print(f"mean gain {statistics.fmean(gains):+.2%}, median {statistics.median(gains):+.2%}")
        write_json(args.out, {**meta, "multiple": args.multiple, "load_average": os.getloadavg(),
                              "mean_gain": statistics.fmean(gains), "median_gain": statistics.median(gains),
                              "rows": rows})
        return
    dense = packaged_model()
    widths = sweep(args.center, args.span)
    models = (dense, *(shaped_copy(dense, args.heads, w) for w in widths))
    # A width's latency relative to the dense model's in each pass, then the median over passes.
    relative = [[1 / s for s in speedups] for speedups in pass_speedups(models, args.passes, args.repeats)]
    latency = [statistics.median(r) for r in relative]
    residual = line_residuals(widths, latency)
    by_alignment: dict[int, list[float]] = {}
    for w, res in zip(widths, residual, strict=True):
        by_alignment.setdefault(alignment(w), []).append(res)
    rows = [{"ffn": w, "alignment": alignment(w), "latency_over_dense": lat, "speedup": 1 / lat,
             "over_line": res, "passes": r} for w, lat, res, r in zip(widths, latency, residual, relative,
                                                                       strict=True)]
    summary = {str(a): {"widths": len(v), "mean_over_line": statistics.fmean(v)}
               for a, v in sorted(by_alignment.items())}
    for row in rows:
        print(f"ffn {row['ffn']:5d} (/{row['alignment']:2d}): x{row['speedup']:.3f}, "
              f"{row['over_line']:+.1%} off the line")
    print({a: f"{s['mean_over_line']:+.2%} over {s['widths']}" for a, s in summary.items()})
    write_json(args.out, {**meta, "heads": args.heads, "load_average": os.getloadavg(),
                          "by_alignment": summary, "rows": rows})


if __name__ == "__main__":
    main()
