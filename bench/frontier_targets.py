"""Fit the frontier's latency-target shapes on this CPU for FFN widths on a multiple.

The frontier harness gives every point of a target method the shared shape of `bench/results/
frontier_targets/x<T>.json` (fitted with any FFN width; `ffn.multiple=1` in the protocol keeps them).
A method that rounds FFN widths to a multiple (`ffn.multiple=16`) runs faster at the same FLOPs
(bench/results/width_alignment*.json), so it needs its own line: this times uniform shapes with FFN
widths on the multiple against the dense packaged MiniLM (`choose_shape`, 32 x 128, interleaved) and
writes `x<T>-m<M>.json`, which bench/frontier.py hands to methods with that `ffn.multiple`.

    python bench/frontier_targets.py --multiple 16 [--match] [--targets 2 3 5] [--repeats 15]   # ~3-4 minutes

Timings drift between sessions (the harness's x2 shape, fitted at x1.99 in an earlier session,
times x2.2 today), and a fit to T can change the head count, so `--match` keeps the harness's heads
for each target and picks the widest FFN on the multiple that times at least as fast as the harness's
own shape, side by side (widths up to 30% wider, median of `--passes` passes): the two methods are
then compared at equal speed and heads, the aligned one keeping more channels.

`--check` instead times, per target, the dense model, the shape of `x<T>.json` and that of
`x<T>-m<M>.json` together (repeats interleaved, `--passes` times) and writes check_m<M>.json: the new
shape should be about as fast as the old one while keeping more FFN channels.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import torch

from trimformer.io import write_json
from trimformer.target import choose_shape, shaped_copy

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from head_ratio_shapes import packaged_model  # noqa: E402
from width_alignment import pass_speedups  # noqa: E402


def check(dense: torch.nn.Module, args: argparse.Namespace) -> None:
    """Time each target's old and new shapes against the dense model in one process."""
    rows = []
    for target in args.targets:
        old = json.loads((args.out / f"x{target:g}.json").read_text())
        new = json.loads((args.out / f"x{target:g}-m{args.multiple}.json").read_text())
        models = (dense, shaped_copy(dense, old["heads"], old["ffn"]), shaped_copy(dense, new["heads"], new["ffn"]))
        speedups = pass_speedups(models, args.passes, args.repeats)
        rows.append({"target": target, "old": {"heads": old["heads"], "ffn": old["ffn"], "speedups": speedups[0]},
                     "new": {"heads": new["heads"], "ffn": new["ffn"], "speedups": speedups[1]}})
        print(f"x{target:g}: old {old['heads']}/{old['ffn']} x{statistics.median(speedups[0]):.2f}, "
              f"new {new['heads']}/{new['ffn']} x{statistics.median(speedups[1]):.2f}", flush=True)
    write_json(args.out / f"check_m{args.multiple}.json",
               {"command": "python bench/frontier_targets.py " + " ".join(sys.argv[1:]), "torch": torch.__version__,
                "threads": torch.get_num_threads(), "load_average": os.getloadavg(), "rows": rows})


def matched(dense: torch.nn.Module, target: float, args: argparse.Namespace) -> None:
    """x<T>-m<M>.json at x<T>.json's heads with the widest FFN on the multiple that is at least as fast
    as x<T>.json's shape: the two timed side by side with every candidate width, `--passes` times."""
    old = json.loads((args.out / f"x{target:g}.json").read_text())
    heads, m = old["heads"], args.multiple
    widths = list(range(old["ffn"] // m * m, int(old["ffn"] * 1.3) // m * m + 1, m))
    models = (dense, shaped_copy(dense, heads, old["ffn"]), *(shaped_copy(dense, heads, w) for w in widths))
    speed = [statistics.median(s) for s in pass_speedups(models, args.passes, args.repeats)]
    fast_enough = [w for w, s in zip(widths, speed[1:], strict=True) if s >= speed[0]] or widths[:1]
    chosen = max(fast_enough)
    record = {**old, "ffn": chosen, "measured_speedup": speed[1 + widths.index(chosen)], "ffn_multiple": m,
              "matched": {"shape": [heads, old["ffn"]], "speedup": speed[0],
                          "candidates": dict(zip(map(str, widths), speed[1:], strict=True))},
              "torch": torch.__version__, "threads": torch.get_num_threads(), "load_average": os.getloadavg(),
              "command": "python bench/frontier_targets.py " + " ".join(sys.argv[1:])}
    write_json(args.out / f"x{target:g}-m{m}.json", record)
    print(f"x{target:g}: {heads} heads; FFN {old['ffn']} x{speed[0]:.2f} -> {chosen} x{record['measured_speedup']:.2f} "
          f"({', '.join(f'{w}: x{s:.2f}' for w, s in zip(widths, speed[1:], strict=True))})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--multiple", type=int, default=16)
    parser.add_argument("--targets", type=float, nargs="+", default=[2.0, 3.0, 5.0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "frontier_targets")
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--match", action="store_true",
                        help="x<T>.json's heads, the widest FFN on the multiple as fast as its shape")
    args = parser.parse_args()
    torch.manual_seed(0)
    dense = packaged_model()
    if args.check:
        check(dense, args)
        return
    for target in args.targets:
        if args.match:
            matched(dense, target, args)
            continue
        choice = choose_shape(dense, target, 32, 128, repeats=args.repeats, ffn_multiple=args.multiple)
        write_json(args.out / f"x{target:g}-m{args.multiple}.json",
                   {**choice.to_dict(), "ffn_multiple": args.multiple, "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "load_average": os.getloadavg(),
                    "command": "python bench/frontier_targets.py " + " ".join(sys.argv[1:])})
        print(f"x{target:g}: {choice.heads} heads, FFN {choice.ffn} (measured x{choice.measured_speedup:.2f})",
              flush=True)


if __name__ == "__main__":
    main()
