"""The pruning engine: targets + importance + schedule -> masks, for any training loop.

    pruner = Pruner(model, config_list, importance="taylor", granularity="out_channel",
                    schedule=Iterative(rounds=12, steps_per_round=100, target=0.5))
    pruner.attach(optimizer)      # scores and masks follow the optimiser's steps
    ...train as usual...
    masks = pruner.masks          # {module: {"weight": 0/1 tensor}}
    pruner.detach(bake=True)      # masked values written into the weights, hooks gone

Masks are parametrizations, so the model stays an ordinary module and the optimiser that
was built before attaching keeps working. Movement pruning (learned scores) lives in
`movement.MovementEngine`, on the same pieces.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from trimformer.allocate import (
    Block,
    allocate,
    block_reduce,
    global_head_keep,
    per_layer_normalised,
    resolve_block,
    topk_keep,
)
from trimformer.config import GranularitySpec
from trimformer.masks import MaskDict, apply_masks, current_masks, remove_masks
from trimformer.plan import whole_head_masks
from trimformer.schedule import Constant, Schedule
from trimformer.scoring import Importance, TaylorImportance, l1_importance, l2_importance
from trimformer.select import Target, select_targets
from trimformer.structure import ModelStructure, family_of, model_structure


def _structure_or_none(model: nn.Module) -> ModelStructure | None:
    return model_structure(model) if family_of(model) is not None else None


class Pruner:
    """Select targets, score them, allocate sparsity, apply masks; optionally per optimiser step."""

    def __init__(self, model: nn.Module, config_list: list, importance: str | Importance = "l1",
                 granularity: GranularitySpec | None = None, schedule: Schedule | None = None,
                 head_units: bool = False, head_allocation: str = "layer"):
        if head_allocation not in ("layer", "global", "global_norm"):
            raise ValueError(f"head_allocation must be 'layer', 'global' or 'global_norm', got {head_allocation!r}")
        self.model = model
        self.head_units = head_units
        self.head_allocation = head_allocation
        self.targets: list[Target] = select_targets(model, config_list)
        self.structure = _structure_or_none(model)
        self.blocks: dict[str, Block] = {
            t.name: resolve_block(t, granularity, self.structure) for t in self.targets
        }
        self.taylor: TaylorImportance | None = None
        if importance == "taylor":
            self.taylor = TaylorImportance(self.targets)
            importance = self.taylor
        elif importance == "l1":
            importance = l1_importance
        elif importance == "l2":
            importance = l2_importance
        elif isinstance(importance, str):
            raise ValueError(f"unknown importance {importance!r}: use 'l1', 'l2', 'taylor' or a callable")
        self.importance: Importance = importance
        self.schedule: Schedule = schedule or Constant()
        self.step_count = 0
        self._progress = -1.0
        self._hooks: list = []

    # -- plan ---------------------------------------------------------------------------------
    def compute_masks(self, progress: float = 1.0) -> MaskDict:
        """Masks at `progress` (0..1) of the configured sparsity, from the current scores."""
        # Block scores are small: rank them on the CPU, so masks are CPU tensors whatever the device.
        scores = {t.name: block_reduce(self.importance(t), self.blocks[t.name]).float().cpu() for t in self.targets}
        masks = allocate(self.targets, scores, self.blocks, sparsity_scale=progress)
        if self.head_units:
            masks.update(self._head_masks(progress))
        by_name = {t.name: t for t in self.targets}
        return _couple_ffn(masks, self.structure, self.blocks, scores, by_name, progress)

    def _head_masks(self, progress: float) -> MaskDict:
        """Whole heads as units: a head's score sums its q, k, v rows and its output columns, and
        the lowest-scoring heads of each layer lose all four at once, so shrinking removes them."""
        if self.structure is None:
            raise ValueError("head_units needs a model with a structure table")
        by_name = {t.name: t for t in self.targets}
        hd, masks = self.structure.head_dim, {}
        layers, head_scores, sparsities = [], [], []
        for layer in self.structure.layers:
            if not all(n in by_name for n in layer.attention_linears):
                continue
            sparsity = by_name[layer.query].sparsity
            if sparsity is None:
                raise ValueError("head_units needs a per-layer sparsity on the attention linears")
            rows = [self.importance(by_name[n]).sum(1) for n in (layer.query, layer.key, layer.value)]
            cols = self.importance(by_name[layer.attn_out]).sum(0)
            layers.append(layer)
            head_score = sum(r.reshape(-1, hd).sum(1) for r in rows) + cols.reshape(-1, hd).sum(1)
            head_scores.append(head_score.float().cpu())
            sparsities.append(sparsity * progress)
        if self.head_allocation == "global_norm":
            head_scores = per_layer_normalised(head_scores)
        if self.head_allocation in ("global", "global_norm"):
            keeps = global_head_keep(head_scores, sum(sparsities) / max(1, len(sparsities)))
        else:
            keeps = [topk_keep(score, s) for score, s in zip(head_scores, sparsities, strict=True)]
        for layer, keep in zip(layers, keeps, strict=True):
            masks.update(whole_head_masks(self.model, layer, keep, hd))
        return masks

    # -- apply --------------------------------------------------------------------------------
    def update_masks(self, progress: float | None = None) -> MaskDict:
        """Compute masks and attach them to the model (monotone: a pruned weight stays pruned)."""
        progress = self.schedule(self.step_count) if progress is None else progress
        new = self.compute_masks(progress)
        old = current_masks(self.model)
        for name, tensors in new.items():
            if name in old:
                tensors["weight"] = tensors["weight"] * old[name]["weight"].to(tensors["weight"].device)
        apply_masks(self.model, new)
        self._progress = progress
        return new

    @property
    def masks(self) -> MaskDict:
        """The masks attached now, in NNI's form."""
        return {name: m for name, m in current_masks(self.model).items() if name in self.blocks}

    def attach(self, optimizer: torch.optim.Optimizer) -> Pruner:
        """Follow `optimizer`: gather gradient scores before each step, update masks after."""
        if self.taylor is not None:
            self._hooks.append(optimizer.register_step_pre_hook(lambda *_: self.taylor.accumulate()))
        self._hooks.append(optimizer.register_step_post_hook(lambda *_: self.step()))
        return self

    def step(self) -> None:
        """Advance the schedule one step; re-mask when the scheduled sparsity moved."""
        self.step_count += 1
        progress = self.schedule(self.step_count)
        if progress != self._progress and (self.taylor is None or self.taylor.steps > 0):
            self.update_masks(progress)
            if self.taylor is not None:
                self.taylor.reset()

    def detach(self, bake: bool = True) -> None:
        """Remove hooks and mask parametrizations (baking the masked values when `bake`)."""
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
        remove_masks(self.model, bake=bake)

    def sparsity_table(self) -> list[tuple[str, tuple[int, ...], int, float]]:
        """(module, weight shape, kept weights, sparsity) per target."""
        masks = self.masks
        rows = []
        for t in self.targets:
            shape = tuple(t.module.weight.shape)
            mask = masks.get(t.name, {}).get("weight")
            kept = int(mask.sum()) if mask is not None else int(t.module.weight.numel())
            rows.append((t.name, shape, kept, 1.0 - kept / max(1, t.module.weight.numel())))
        return rows

    def show_pruned_weights(self, print_fn: Callable[[str], None] = print) -> None:
        """Print the per-layer table: shape, kept weights, sparsity."""
        rows = self.sparsity_table()
        width = max([len(r[0]) for r in rows] + [6])
        print_fn(f"{'module':<{width}}  {'shape':>14}  {'kept':>10}  sparsity")
        for name, shape, kept, sparsity in rows:
            print_fn(f"{name:<{width}}  {str(shape):>14}  {kept:>10}  {sparsity:8.4f}")
        total = sum(r[2] for r in rows), sum(t.module.weight.numel() for t in self.targets)
        print_fn(f"{'total':<{width}}  {'':>14}  {total[0]:>10}  {1 - total[0] / max(1, total[1]):8.4f}")


def _couple_ffn(masks: MaskDict, structure: ModelStructure | None, blocks: dict[str, Block],
                scores: dict[str, torch.Tensor], targets: dict[str, Target], progress: float) -> MaskDict:
    """With channel granularity on both FFN linears of a layer, one FFN channel is a row of the
    first plus a column of the second: rank channels once by the sum of both scores, so both
    masks remove the same channels at the configured sparsity."""
    if structure is None:
        return masks
    for layer in structure.layers:
        a, b = targets.get(layer.ffn_in), targets.get(layer.ffn_out)
        if a is None or b is None or a.sparsity is None or b.sparsity is None:
            continue
        if blocks[a.name][0] != 1 or blocks[b.name][1] != 1 or blocks[a.name][1] == 1:
            continue
        channel_score = scores[a.name].flatten() + scores[b.name].flatten()
        keep = topk_keep(channel_score, max(a.sparsity, b.sparsity) * progress)
        masks[a.name] = {"weight": keep[:, None].expand_as(a.module.weight).clone()}
        masks[b.name] = {"weight": keep[None, :].expand_as(b.module.weight).clone()}
    return masks


def remove_masks_of(module: nn.Module) -> None:
    """Bake and drop any earlier mask on this module, so a new pruner starts from its weights."""
    if torch.nn.utils.parametrize.is_parametrized(module, "weight"):
        torch.nn.utils.parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)

