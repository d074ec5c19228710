"""Do uneven shapes time like the uniform shape their latency target was fitted on?

`--target-speedup` fits latency against FLOPs on uniform shapes (the same heads and FFN width in
every layer); global allocation then spreads the same totals unevenly over the layers (CoLA x3:
heads [2, 11, 5, 4, 1, 1], FFN [1060, 930, 531, 172, 118, 31]): the same FLOPs, but narrow matrices
could run at fewer FLOPs per second. For each finished frontier point of `--method` this times,
against the dense MiniLM (random weights: latency does not depend on the values), the point's own
shape, its heads with its FFN total spread evenly, and its heads' total spread evenly with its own FFN
widths: the dense model and the three shapes of a point in one process, repeats interleaved.

    python bench/uneven_shapes.py [--method taylor_ra5] [--repeats 7]   # ~6 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from trimformer.bench import time_models
from trimformer.io import write_json
from trimformer.target import shaped_copy

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from head_ratio_shapes import packaged_model  # noqa: E402


def even(total: int, layers: int) -> list[int]:
    """`total` spread over `layers` as evenly as integers allow (the remainder on the first layers)."""
    return [total // layers + (1 if i < total % layers else 0) for i in range(layers)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="taylor_ra5")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--results", type=Path, default=BENCH / "results" / "frontier")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "uneven_shapes.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    dense = packaged_model()

    rows = []
    for path in sorted(args.results.glob(f"*-{args.method}-*.json")):
        point = json.loads(path.read_text())
        heads, ffn = point["heads_per_layer"], point["ffn_per_layer"]
        n = len(heads)
        shapes = {"own": (heads, ffn), "even_ffn": (heads, even(sum(ffn), n)),
                  "even_heads": (even(sum(heads), n), ffn)}
        # The dense model and the three shapes of a point are timed together, repeats interleaved.
        stats = time_models((dense, *(shaped_copy(dense, *shape) for shape in shapes.values())), 32, 128,
                            warmup=2, repeats=args.repeats)
        row = {"task": point["task"], "target": float(next(iter(point["sweep"].values()))),
               "frontier_speedup": point["speedup"]}
        for (name, shape), stat in zip(shapes.items(), stats[1:], strict=True):
            row[name] = {"heads": shape[0], "ffn": shape[1], "speedup": stats[0].median_s / stat.median_s}
        rows.append(row)
        print(json.dumps({k: round(v["speedup"], 3) if isinstance(v, dict) else v for k, v in row.items()}),
              flush=True)
    out = {"command": "python bench/uneven_shapes.py " + " ".join(sys.argv[1:]), "torch": torch.__version__,
           "threads": torch.get_num_threads(), "batch": 32, "seq_len": 128, "load_average": os.getloadavg(),
           "rows": rows}
    write_json(args.out, out)


if __name__ == "__main__":
    main()
