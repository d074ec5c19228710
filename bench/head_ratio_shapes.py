"""Does `target.head_ratio` keep the speedup? Times the uniform shapes that each head ratio picks for
a target (from the frontier's saved latency lines) against the dense MiniLM, on this CPU.

The split moves FLOPs between heads and FFN channels at the same total; if a head cost more (or
less) time per FLOP than a channel, the same target would land at another speedup. Each shape is
timed in one process against the dense model (interleaved, warm-up, median of `--repeats`).

    python bench/head_ratio_shapes.py [--targets 2 3 5] [--ratios 1 2] [--repeats 15]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification

from trimformer.bench import compare_latency
from trimformer.cli import default_model
from trimformer.io import write_json
from trimformer.structure import model_structure
from trimformer.target import flops_fraction, shape_on_line, shaped_copy

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results" / "head_ratio_shapes.json"


def packaged_model() -> torch.nn.Module:
    """The packaged MiniLM's shape with random weights (latency does not depend on the values)."""
    config = AutoConfig.from_pretrained(default_model(), num_labels=2)
    return AutoModelForSequenceClassification.from_config(config).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", type=float, nargs="+", default=[2.0, 3.0, 5.0])
    parser.add_argument("--ratios", type=float, nargs="+", default=[1.0, 2.0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.manual_seed(0)
    dense = packaged_model()
    st = model_structure(dense)
    rows = []
    for target in args.targets:
        line = json.loads((BENCH / "results" / "frontier_targets" / f"x{target:g}.json").read_text())["calibration"]
        for ratio in args.ratios:
            heads, ffn = shape_on_line(st, line, target, 128, head_ratio=ratio)
            result = compare_latency(dense, shaped_copy(dense, heads, ffn), 32, 128, warmup=3, repeats=args.repeats)
            rows.append({"target": target, "head_ratio": ratio, "heads": heads, "ffn": ffn,
                         "flops_fraction": flops_fraction(st, heads, ffn, 128), "speedup": result.speedup})
            print(json.dumps(rows[-1]))
    out = {"command": "python bench/head_ratio_shapes.py " + " ".join(sys.argv[1:]), "torch": torch.__version__,
           "threads": torch.get_num_threads(), "batch": 32, "seq_len": 128, "load_average": os.getloadavg(),
           "rows": rows}
    write_json(RESULTS, out)


if __name__ == "__main__":
    main()
