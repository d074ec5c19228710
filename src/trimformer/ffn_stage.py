"""The FFN stage: Taylor-ranked FFN channels cut in `ffn.rounds` rounds over one epoch, each round a
few steps gathering scores, the cut (a physical shrink, so later rounds train the smaller model)
and training to the next round; then the steps kept back train the final width, and the classifier's
bias may be calibrated. Resumable by round: `progress.json` and `round_model` hold the last round.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
from torch import nn

from trimformer import dist
from trimformer.allocate import aligned_counts
from trimformer.compensate import compensate_cut, sample_batches
from trimformer.io import load_pruned, save_pruned, write_json
from trimformer.plan import plan_from_masks
from trimformer.pruners import Pruner
from trimformer.recipe import Ffn
from trimformer.schedule import ffn_layer_sparsities, ffn_round_config
from trimformer.scoring import ChannelTaylorImportance
from trimformer.shrink import shrink
from trimformer.structure import model_structure
from trimformer.train import fit

log = logging.getLogger("trimformer")

if TYPE_CHECKING:
    from trimformer.pipeline import Run

__all__ = ["aligned_global_cut", "compensate_ffn", "ffn_targets", "run_ffn_stage"]


def ffn_targets(run: Run, model: nn.Module) -> dict[str, float]:
    """Per-layer FFN sparsity: fixed, or the tutorial's rule (half the heads' keep ratio)."""
    structure, section = model_structure(model), run.recipe.ffn
    heads = run.done("heads").get("heads_per_layer") or [structure.num_heads] * len(structure.layers)
    return ffn_layer_sparsities([layer.ffn_in for layer in structure.layers], heads, structure.num_heads,
                                structure.intermediate_size, section.rule, section.sparsity)


def compensate_ffn(run: Run, model: nn.Module, masks: dict, section: Ffn, seed: int) -> None:
    """Re-fit each cut layer's second FFN linear for the channels about to go (compensate.py)."""
    keeps = {}  # the channels `shrink` keeps (its plan), per second FFN linear of a masked layer
    for layer, kept in zip(model_structure(model).layers, plan_from_masks(model, masks).layers, strict=True):
        if layer.ffn_in in masks:
            keep = torch.zeros(model.get_submodule(layer.ffn_out).in_features, dtype=torch.bool)
            keep[list(kept.ffn_kept)] = True
            keeps[layer.ffn_out] = keep
    batches = sample_batches(run.data.train, section.compensate_rows, run.recipe.eval_batch_size,
                             run.data.collate, seed)
    tokens = compensate_cut(model, keeps, batches, run.device, section.compensate_ridge)
    log.info("ffn: %d second FFN linears re-fitted by least squares over %d tokens", len(keeps), tokens)


def aligned_global_cut(model: nn.Module, pruner: Pruner, masks: dict, multiple: int) -> dict:
    """The last round's global cut with each layer's kept channels moved to a multiple of `multiple`
    (the total kept as `aligned_counts` says): per-layer top-k on the same scores."""
    names = [t.name for t in pruner.targets]
    widths = [model.get_submodule(name).out_features for name in names]
    kept = [int((masks[name]["weight"].sum(1) > 0).sum()) for name in names]
    counts = aligned_counts(kept, widths, multiple)
    config = [{"op_names": [name], "sparsity": 1 - c / w} for name, c, w in zip(names, counts, widths, strict=True)]
    return Pruner(model, config, importance=pruner.importance, granularity="out_channel").compute_masks(1.0)


def run_ffn_stage(run: Run) -> None:
    """The FFN stage of `run`: the rounds (resuming after the last one saved), the recovery, the calibration."""
    start, section, folder = time.perf_counter(), run.recipe.ffn, run.stage_dir("ffn")
    progress_file = folder / "progress.json"
    done_rounds = json.loads(progress_file.read_text())["round"] if progress_file.is_file() else 0
    finished = done_rounds >= section.rounds and (folder / "model").is_dir()  # only not recorded
    model = load_pruned(folder / "model" if finished else folder / "round_model" if done_rounds
                        else run.stage_dir("distil") / "model", run.device)
    base = run.settings(section, distill=True)
    steps_per_epoch = -(-len(run.data.train) // base.batch_size)
    total = base.max_steps or max(section.rounds, round(base.epochs * steps_per_epoch))
    per_round = max(1, int(total * (1 - section.recover)) // section.rounds)
    targets = json.loads(progress_file.read_text())["targets"] if done_rounds else ffn_targets(run, model)
    teacher_set, teacher = run.teacher_set(), run.teacher_model(section)
    full_width = model_structure(model).intermediate_size  # the dense width: shrinking keeps the config's
    multiple = section.width_multiple(run.recipe.bench, full_width)
    if done_rounds < section.rounds:
        log.info("ffn: channels ranked by %s%s", "|sum of w * dL/dw| over each second-linear column (channel "
                 "Taylor)" if section.score == "channel" else "sum of |w * dL/dw| over each first-linear row",
                 f"; final widths multiples of {multiple}" if multiple > 1 else "")

    def train(steps: int, lr: float, seed: int, desc: str, average: float = 0.0, **kwargs) -> None:
        # Only the recovery averages its weights (`ffn.average`): the rounds change the shape.
        fit(model, run.task, teacher_set, run.data.collate,
            replace(base, epochs=1.0, max_steps=steps, lr=lr, seed=seed, warmup_ratio=0.0, average=average),
            device=run.device, desc=desc, teacher=teacher, **kwargs)

    for r in range(done_rounds, section.rounds):
        last = None
        if r == section.rounds - 1:
            widths = {name: model.get_submodule(name).out_features for name in targets}
            last = (widths, full_width)
        config = ffn_round_config(targets, section.rounds, section.allocation, last, multiple)
        scorer = ChannelTaylorImportance.for_ffn(model, targets) if section.score == "channel" else None
        pruner = Pruner(model, config, importance=scorer or "taylor", granularity="out_channel")
        accumulate = (scorer or pruner.taylor).accumulate
        gather = min(section.taylor_steps, per_round)
        lr = section.lr * (1 - r / section.rounds)
        train(gather, lr, base.seed + 7919 * (r + 1), f"ffn round {r + 1}/{section.rounds}: scores",
              on_optimizer=lambda opt, a=accumulate: opt.register_step_pre_hook(lambda *_: a()))
        masks = pruner.compute_masks(1.0)
        if last is not None and section.allocation == "global" and multiple > 1:
            masks = aligned_global_cut(model, pruner, masks, multiple)
        dist.check_identical({n: m["weight"] for n, m in masks.items()}, f"the FFN masks of round {r + 1}")
        if section.compensate != "none":
            compensate_ffn(run, model, masks, section, base.seed + 7919 * (r + 1) + 2)
        shrink(model, masks)
        if per_round > gather:
            train(per_round - gather, lr, base.seed + 7919 * (r + 1) + 1, f"ffn round {r + 1}/{section.rounds}")
        dist.on_main(lambda: save_pruned(model, folder / "round_model", tokenizer=run.data.tokenizer))
        dist.on_main(lambda r=r: write_json(progress_file, {"round": r + 1, "targets": targets}))
        log.info("ffn round %d/%d: widths %s", r + 1, section.rounds,
                 [model.get_submodule(n).out_features for n in targets])
    recover, extra = total - per_round * section.rounds, {}
    if not finished:  # else recovered and calibrated before a crash, only not recorded: loaded above
        if section.recover > 0 and recover > 0:
            # Train at the final width for the steps kept back, the learning rate decaying to zero.
            recover_lr = section.recover_lr or section.lr / section.rounds
            log.info("ffn: %d steps at the final width from lr %.3g", recover, recover_lr)
            train(recover, recover_lr, base.seed + 7919 * (section.rounds + 1), "ffn recover",
                  average=section.average, checkpoint_dir=folder / "recover_checkpoint")
        extra = run.calibrate(model, section)
        dist.on_main(lambda: save_pruned(model, folder / "model", tokenizer=run.data.tokenizer))
    run.finish("ffn", start, run.evaluate(model), **extra)
