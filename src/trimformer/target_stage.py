"""`--target-speedup`: before the attention stage, time shapes of the fine-tuned model once (saved in
target.json, so a resumed run reuses it), pick the per-layer heads and FFN width that measure the
target (target.py), and set the run's attention and FFN sparsities to them.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from trimformer import dist
from trimformer.config import ConfigError
from trimformer.io import load_pruned, write_json
from trimformer.structure import model_structure
from trimformer.target import TargetOutOfReach, choose_shape, shape_on_line

log = logging.getLogger("trimformer")

if TYPE_CHECKING:
    from trimformer.pipeline import Run

__all__ = ["apply_target"]


def apply_target(run: Run) -> None:
    """With a target speedup: measure shapes against the fine-tuned model once (saved in
    target.json, so a resumed run reuses it) and set the attention and FFN sparsities. A saved
    choice made for another head ratio or FFN multiple is re-split on its own fitted latency line."""
    path, head_ratio = run.out / "target.json", run.recipe.target.head_ratio
    dense = load_pruned(run.stage_dir("finetune") / "model")
    wanted = run.options.target_speedup
    saved = json.loads(path.read_text()) if path.is_file() else None
    retime = saved is None or saved["target_speedup"] != wanted  # no choice yet, or another target's
    # Once the attention stage has begun (a checkpoint counts), its masks follow the saved choice.
    if saved is not None and retime and run.stage_dir("attention").exists():
        raise ConfigError(f"{run.out} is being pruned for target speedup x{saved['target_speedup']:g} "
                          f"(target.json); x{wanted:g} needs a new --output-dir")
    refused: TargetOutOfReach | None = None
    st, bench = model_structure(dense), run.recipe.bench
    multiple = run.recipe.ffn.width_multiple(bench, st.intermediate_size)
    if dist.is_main() and retime:
        try:
            choice = choose_shape(dense, wanted, bench.batch_size, bench.seq_len, bench.threads,
                                  repeats=bench.repeats, head_ratio=head_ratio,
                                  ffn_multiple=multiple, device=bench.device,
                                  bf16=bench.bf16, compile=bench.compile)
            write_json(path, choice.to_dict())
        except TargetOutOfReach as err:
            refused = err
    # Every rank meets here (a sync) and learns of a refusal: raising before it would leave the
    # others waiting, and a rank reading target.json before the main process wrote it would not.
    if dist.any_rank(refused is not None):
        raise refused or TargetOutOfReach("the main process found the target speedup out of reach")
    choice = json.loads(path.read_text())
    began = run.stage_dir("attention").exists()
    if began and "applied" not in choice:
        # Begun before target.json recorded the shape applied (and before ffn.multiple): keep the
        # rule it began with, any FFN width, so the rest of the run prunes to the same shape.
        log.warning("target.json predates its record of the shape applied: resuming with any FFN width "
                    "(ffn.multiple=1), as the run began")
        multiple = run.recipe.ffn.multiple = 1
    heads, ffn = choice["heads"], choice["ffn"]
    timed_multiple = choice.get("ffn_multiple")  # absent in choices timed before it was recorded
    if choice.get("head_ratio", 1.0) != head_ratio or (ffn % multiple if timed_multiple is None
                                                        else timed_multiple != multiple):
        # The line's FLOPs fractions were counted at the length the shapes were timed at, which
        # may not be this run's bench.seq_len (the GPU frontier times a token 4 x 32 at the end).
        seq_len = choice.get("seq_len") or run.recipe.bench.seq_len
        heads, ffn = shape_on_line(st, choice["calibration"], choice["target_speedup"], seq_len,
                                   multiple, head_ratio)
    # The shape the attention stage prunes to is recorded: a resumed run must not re-split it to
    # another (its head_ratio or ffn.multiple changed, or their defaults did).
    applied = choice.get("applied", {"heads": heads, "ffn": ffn})
    if began:
        if (applied["heads"], applied["ffn"]) != (heads, ffn):
            raise ConfigError(f"{run.out} is being pruned to {applied['heads']} heads and {applied['ffn']} FFN "
                              f"channels a layer (target.json); this run's target.head_ratio={head_ratio:g} "
                              f"and ffn.multiple={multiple} give {heads} and {ffn}: resume with the settings "
                              "it started with, or use a new --output-dir")
    else:
        record = {**choice, "applied": {"heads": heads, "ffn": ffn, "head_ratio": head_ratio,
                                        "ffn_multiple": multiple}}
        dist.on_main(lambda: write_json(path, record))
    run.recipe.attention.mode = "hard"
    run.recipe.attention.sparsity = 1 - heads / st.num_heads
    run.recipe.ffn.rule = "fixed"
    run.recipe.ffn.sparsity = 1 - ffn / st.intermediate_size
    run.target_shape = (heads, ffn)
    spread = run.recipe.attention.allocation != "layer" or run.recipe.ffn.allocation != "layer"
    if spread and run.recipe.target.keeps_timed_shape(run.recipe.bench):
        log.info("target: every layer keeps the timed shape (target.allocation=%s, timed on %s), not the "
                 "recipe's global spread", run.recipe.target.allocation, run.recipe.bench.device)
        run.recipe.attention.allocation = run.recipe.ffn.allocation = "layer"
    log.info("target x%.2f: %d heads and %d FFN channels per layer (head ratio %g; the saved choice measured "
             "x%.2f for %d and %d)", choice["target_speedup"], heads, ffn, head_ratio,
             choice["measured_speedup"], choice["heads"], choice["ffn"])
