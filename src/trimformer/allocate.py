"""Scores -> masks: granularity (block shapes) and sparsity allocation, local or global.

A granularity is a block shape (rows, cols) over a Linear weight of shape (out, in):
fine-grained = (1, 1), output channel = (1, in), input channel = (out, 1), and `auto`
picks per-head blocks (head_dim x head_dim) for q/k/v/o and channels for the FFN. Scores
are given per block (shape (out // rows, in // cols)); a mask removes whole blocks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from trimformer.config import ConfigError, GranularitySpec
from trimformer.masks import MaskDict
from trimformer.select import Target
from trimformer.structure import ModelStructure

Block = tuple[int, int]


def resolve_block(target: Target, granularity: GranularitySpec | None, structure: ModelStructure | None,
                  default: GranularitySpec = "finegrained") -> Block:
    """The concrete block shape for one target (the entry's granularity wins over the pruner's)."""
    spec = target.granularity if target.granularity is not None else (granularity or default)
    out_features, in_features = target.module.weight.shape
    if spec == "auto":
        role = structure.role_of(target.name) if structure is not None else None
        if role in ("query", "key", "value", "attn_out"):
            spec = (structure.head_dim, structure.head_dim)
        elif role == "ffn_in":
            spec = "out_channel"
        elif role == "ffn_out":
            spec = "in_channel"
        else:
            spec = "finegrained"
    if spec == "finegrained":
        return (1, 1)
    if spec == "out_channel":
        return (1, in_features)
    if spec == "in_channel":
        return (out_features, 1)
    rows, cols = spec
    rows = out_features if rows == -1 else rows
    cols = in_features if cols == -1 else cols
    if out_features % rows or in_features % cols:
        raise ConfigError(f"block {spec} does not tile the weight of {target.name!r} of shape "
                          f"{(out_features, in_features)}")
    return (rows, cols)


def block_reduce(values: torch.Tensor, block: Block) -> torch.Tensor:
    """Sum a (out, in) tensor over blocks -> (out // rows, in // cols)."""
    rows, cols = block
    out_features, in_features = values.shape
    return values.reshape(out_features // rows, rows, in_features // cols, cols).sum(dim=(1, 3))


def expand_blocks(block_mask: torch.Tensor, block: Block) -> torch.Tensor:
    """Inverse of `block_reduce` for masks: repeat each block's value over the block."""
    return block_mask.repeat_interleave(block[0], dim=0).repeat_interleave(block[1], dim=1)


def topk_keep(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """A 0/1 mask (same shape as scores) removing exactly round(sparsity * n) lowest scores.
    Ties are broken by position, so the result is deterministic."""
    n = scores.numel()
    n_prune = min(n, int(round(sparsity * n)))
    keep = torch.ones(n, dtype=torch.float32)
    if n_prune:
        order = torch.argsort(scores.flatten().float(), stable=True)
        keep[order[:n_prune]] = 0.0
    return keep.reshape(scores.shape)


def allocate(targets: Sequence[Target], block_scores: dict[str, torch.Tensor], blocks: dict[str, Block],
             sparsity_scale: float = 1.0) -> MaskDict:
    """Masks for all targets: per-layer top-k for `sparsity` targets, one global ranking per
    `total_sparsity` group (budget in weights, capped by max_sparsity_per_layer).
    `sparsity_scale` (0..1) is the schedule's progress towards the configured ratios."""
    masks: MaskDict = {}
    groups: dict[int, list[Target]] = {}
    for target in targets:
        if target.group is not None:
            groups.setdefault(target.group, []).append(target)
            continue
        if target.sparsity is None:
            raise ConfigError(f"{target.name!r}: this pruner needs a sparsity in the config entry")
        keep = topk_keep(block_scores[target.name], target.sparsity * sparsity_scale)
        masks[target.name] = {"weight": expand_blocks(keep, blocks[target.name])}
    for members in groups.values():
        masks.update(_allocate_global(members, block_scores, blocks, sparsity_scale))
    return masks


def _allocate_global(members: list[Target], block_scores: dict[str, torch.Tensor], blocks: dict[str, Block],
                     sparsity_scale: float) -> MaskDict:
    total = members[0].total_sparsity * sparsity_scale
    cap = members[0].max_sparsity
    sizes = {t.name: blocks[t.name][0] * blocks[t.name][1] for t in members}
    numels = {t.name: t.module.weight.numel() for t in members}
    budget = int(round(total * sum(numels.values())))
    # One ranking over every block of the group, lowest score first (ties: layer, then position).
    # A layer's blocks are taken in its own order while under its cap (and never all of it, so
    # its shape stays valid); then the global prefix that fits the budget is pruned.
    flat = [block_scores[t.name].flatten().float() for t in members]
    scores = torch.cat(flat)
    layer_ids = torch.cat([torch.full((s.numel(),), i) for i, s in enumerate(flat)])
    block_size = torch.tensor([sizes[t.name] for t in members], dtype=torch.float64)[layer_ids]
    order = torch.argsort(scores, stable=True)
    sorted_layers = layer_ids[order]
    sorted_sizes = block_size[order]
    within_layer = torch.zeros_like(sorted_sizes)
    for i in range(len(members)):
        sel = sorted_layers == i
        within_layer[sel] = torch.cumsum(sorted_sizes[sel], 0)
    caps = torch.tensor([min(math.floor((cap if cap is not None else 1.0) * numels[t.name] + 1e-9),
                             numels[t.name] - sizes[t.name]) for t in members], dtype=torch.float64)
    eligible = within_layer <= caps[sorted_layers]
    spent = torch.cumsum(torch.where(eligible, sorted_sizes, torch.zeros_like(sorted_sizes)), 0)
    prune_sorted = eligible & (spent <= budget)
    pruned_flat = torch.zeros(scores.numel(), dtype=torch.bool)
    pruned_flat[order[prune_sorted]] = True
    out: MaskDict = {}
    offset = 0
    for t, s in zip(members, flat, strict=True):
        keep = (~pruned_flat[offset:offset + s.numel()]).float().reshape(block_scores[t.name].shape)
        out[t.name] = {"weight": expand_blocks(keep, blocks[t.name])}
        offset += s.numel()
    return out


def aligned_counts(counts: Sequence[int], widths: Sequence[int], multiple: int) -> list[int]:
    """Per-layer kept counts moved to multiples of `multiple` (at least one multiple, at most the
    layer's width): every layer rounds down, then the layers that lost the most to rounding (not the
    ones whose next channels score best) get one multiple back each until the total is the multiple
    nearest the original's. Raising a layer to one multiple or capping it at its width can leave the
    total further off."""
    if multiple <= 1:
        return list(counts)
    aligned = [min(w, max(multiple, c // multiple * multiple)) for c, w in zip(counts, widths, strict=True)]
    goal = round(sum(counts) / multiple) * multiple
    for i in sorted(range(len(aligned)), key=lambda i: (aligned[i] - counts[i], i)):  # most lost first
        if sum(aligned) >= goal:
            break
        if aligned[i] + multiple <= widths[i]:
            aligned[i] += multiple
    return aligned


def per_layer_normalised(head_scores: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each layer's head scores divided by their L2 norm (Michel et al. 2019), so a global ranking
    compares heads by their share of their own layer, not by raw scales that differ by layer."""
    return [s / s.norm().clamp_min(1e-12) for s in head_scores]


def global_head_keep(head_scores: list[torch.Tensor], sparsity: float) -> list[torch.Tensor]:
    """One ranking of every head of every layer: remove the round(sparsity * all heads) lowest,
    never a layer's best head (so every layer keeps one). Heads cost the same in every layer, so
    the total, and with it the FLOPs and latency, is what a uniform `sparsity` would give."""
    sizes = [s.numel() for s in head_scores]
    flat = torch.cat(head_scores)
    protected = torch.zeros(flat.numel(), dtype=torch.bool)
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    for offset, score in zip(offsets, head_scores, strict=True):
        protected[offset + int(torch.argmax(score))] = True
    n_prune = min(int(round(sparsity * flat.numel())), int((~protected).sum()))
    order = [i for i in torch.argsort(flat, stable=True).tolist() if not protected[i]]
    keep = torch.ones(flat.numel())
    keep[order[:n_prune]] = 0.0
    return list(torch.split(keep, sizes))
