"""Compensation for removed FFN channels and heads: before a cut, re-fit the linear that consumes
them (the second FFN linear, the attention output projection) so the layer's output moves as little
as possible.

A Taylor round removes the channels whose loss change is smallest to first order, but each removed
channel still carried a mean (GELU outputs are mostly positive) and a part the kept channels can
explain. `lstsq` re-fits the kept columns and the bias by ridge least squares so W' h_kept + b' best
matches W h + b over tokens of training rows (layer-wise reconstruction, as in Kwon et al. 2022, "A
Fast Post-Training Pruning Framework for Transformers"), applied before `shrink` removes the columns.
It is solved in float64 from the channels' second moments, so the cost is one d x d Gram per layer,
not the tokens. (Folding only the removed channels' means into the bias, FLAP's compensation, was
measured too: on CoLA it left the pruned MiniLM with constant outputs at x3 and x5, so it is not offered.)

The same re-fit serves the heads stage (`compensate_heads`): the attention output projection's input
is the heads' context vectors laid side by side, so cutting a head removes a block of its columns,
and the kept heads' columns and the bias are re-fitted to emit what all heads did (measured on CoLA
at x3: dev MCC 0.229 with no training against 0.059 for the plain cut, bench/results/heads_compensate_oneshot).

Statistics come from padding-free tokens of `rows` training sequences in eval mode (no dropout). All
processes of a multi-process run read the same rows, so each computes the same new weights.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import Dataset

from trimformer.masks import MaskDict
from trimformer.plan import plan_from_masks
from trimformer.structure import model_structure
from trimformer.train import model_inputs

__all__ = ["ChannelStats", "collect_channel_stats", "compensate_cut", "compensate_heads", "compensate_linear",
           "head_column_keeps", "sample_batches", "solve_refit"]


@dataclass
class ChannelStats:
    """First and second moments of one linear's input channels over `count` tokens (float64)."""

    count: float | torch.Tensor  # tokens (in training, a decayed sum of them, a 0-d tensor)
    total: torch.Tensor  # [in_features]: sum of the inputs
    gram: torch.Tensor | None  # [in_features, in_features]: sum of outer products


@torch.no_grad()
def collect_channel_stats(model: nn.Module, linear_names: Iterable[str], batches: Iterable[dict],
                          device: torch.device | str = "cpu") -> dict[str, ChannelStats]:
    """Run `batches` through `model` (eval mode) and gather the input moments of each named linear
    over the tokens the attention mask keeps."""
    names = list(linear_names)
    stats: dict[str, ChannelStats] = {}
    token_mask: list[torch.Tensor | None] = [None]

    def hook_for(name: str) -> Callable:
        def hook(_module: nn.Module, args: tuple) -> None:
            inputs = args[0]
            flat = inputs.reshape(-1, inputs.shape[-1])
            if token_mask[0] is not None:
                flat = flat[token_mask[0].reshape(-1)]
            flat = flat.double()
            entry = stats.get(name)
            if entry is None:
                width = flat.shape[1]
                entry = stats[name] = ChannelStats(0, torch.zeros(width, dtype=torch.float64, device=flat.device),
                                                   torch.zeros(width, width, dtype=torch.float64, device=flat.device))
            entry.count += flat.shape[0]
            entry.total += flat.sum(0)
            entry.gram += flat.T @ flat
        return hook

    handles = [model.get_submodule(n).register_forward_pre_hook(hook_for(n)) for n in names]
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            inputs = {k: v.to(device) for k, v in model_inputs(batch).items()}
            mask = inputs.get("attention_mask")
            token_mask[0] = mask.bool() if mask is not None else None
            model(**inputs)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    missing = [n for n in names if n not in stats]
    if missing:
        raise ValueError(f"no inputs reached {missing}: are they linears the model's forward uses?")
    return {n: stats[n] for n in names}


@torch.no_grad()
def solve_refit(weight: torch.Tensor, bias: torch.Tensor, keep: torch.Tensor, stats: ChannelStats,
                ridge: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """The ridge least-squares fit (float64) of the kept columns and the bias: W' h_keep + b' best
    matches W h + b over the inputs `stats` describes. Returns (W' [out, kept], b' [out])."""
    if stats.gram is None:
        raise ValueError("least-squares compensation needs the inputs' second moments")
    weight, keep = weight.double(), keep.to(weight.device).bool()
    if keep.numel() != weight.shape[1]:
        raise ValueError(f"keep has {keep.numel()} entries, the weight {weight.shape[1]} input columns")
    # Second moments of z = [h; 1]; solve W'_aug G[K, K] = W_aug G[:, K] for K = kept channels + bias.
    width = weight.shape[1]
    gram = torch.empty(width + 1, width + 1, dtype=torch.float64, device=weight.device)
    gram[:width, :width] = stats.gram.to(weight.device)
    gram[:width, width] = gram[width, :width] = stats.total.to(weight.device)
    gram[width, width] = stats.count
    gram /= stats.count
    weight_aug = torch.cat([weight, bias.double()[:, None]], dim=1)
    kept = torch.cat([keep, torch.ones(1, dtype=torch.bool, device=keep.device)])
    system = gram[kept][:, kept]
    # Ridge on the channels only, scaled to their mean energy, so near-duplicate channels stay stable.
    diag = torch.diagonal(system)[:-1]
    diag += ridge * float(diag.mean())
    rhs = weight_aug @ gram[:, kept]
    solved = torch.linalg.solve(system, rhs.T).T  # system is symmetric
    return solved[:, :-1], solved[:, -1]


@torch.no_grad()
def compensate_linear(linear: nn.Linear, keep: torch.Tensor, stats: ChannelStats, ridge: float = 1e-3) -> None:
    """Change `linear` in place (before its removed input columns are cut) so that on the collected
    inputs, W[:, keep] h_keep + b approximates the uncut W h + b; the removed columns become zero.
    `keep`: bool [in_features]."""
    if linear.bias is None:
        raise ValueError("compensation needs a linear with a bias")
    if torch.nn.utils.parametrize.is_parametrized(linear):  # writes to .weight would land in a temporary
        raise ValueError("compensation needs a linear without mask parametrizations: remove_masks first")
    keep = keep.to(linear.weight.device).bool()
    if keep.numel() != linear.in_features:
        raise ValueError(f"keep has {keep.numel()} entries, the linear {linear.in_features} inputs")
    if bool(keep.all()) or stats.count == 0:
        return
    kept_weight, bias = solve_refit(linear.weight, linear.bias, keep, stats, ridge)
    linear.weight[:, keep] = kept_weight.to(linear.weight.dtype)
    linear.bias.copy_(bias.to(linear.bias.dtype))
    # The fit already stands in for everything the removed channels emitted. A masked channel still
    # emits act(its bias), which `shrink` folds into this bias; zero columns make that fold add nothing
    # (without this, every round counted the removed channels' constant output twice).
    linear.weight[:, ~keep] = 0


def compensate_cut(model: nn.Module, keeps: dict[str, torch.Tensor], batches: Iterable[dict],
                   device: torch.device | str = "cpu", ridge: float = 1e-3) -> int:
    """Gather the input moments of each linear in `keeps` (consumer name -> bool mask of the input
    channels that stay) over `batches`, then compensate each for the channels that go; returns the
    number of tokens the moments came from."""
    stats = collect_channel_stats(model, keeps, batches, device)
    for name, keep in keeps.items():
        compensate_linear(model.get_submodule(name), keep, stats[name], ridge)
    return int(next(iter(stats.values())).count) if stats else 0


def head_column_keeps(model: nn.Module, masks: MaskDict, drop_empty_layers: bool = False) -> dict[str, torch.Tensor]:
    """Per attention output projection that loses heads under `masks` (the heads `shrink` would
    remove: `plan_from_masks`), a bool mask of its input columns that stay; layers `shrink` drops
    whole (`drop_empty_layers`) are left out."""
    structure = model_structure(model)
    keeps = {}
    for layer, kept in zip(structure.layers, plan_from_masks(model, masks, drop_empty_layers).layers, strict=True):
        if kept.dropped:
            continue
        heads = torch.zeros(model.get_submodule(layer.attn_out).in_features // structure.head_dim, dtype=torch.bool)
        heads[list(kept.heads_kept)] = True
        if not bool(heads.all()):
            keeps[layer.attn_out] = heads.repeat_interleave(structure.head_dim)
    return keeps


def compensate_heads(model: nn.Module, masks: MaskDict, batches: Iterable[dict], device: torch.device | str = "cpu",
                     ridge: float = 1e-3, drop_empty_layers: bool = False) -> tuple[int, int]:
    """Before `shrink(model, masks, restore_partial=True, drop_empty_layers=...)`: re-fit the
    attention output projection of each layer that loses heads, so it emits what all its heads did
    on `batches`' tokens. Returns (layers re-fitted, tokens the moments came from)."""
    keeps = head_column_keeps(model, masks, drop_empty_layers)
    if not keeps:
        return 0, 0
    return len(keeps), compensate_cut(model, keeps, batches, device, ridge)


def sample_batches(dataset: Dataset, rows: int, batch_size: int, collate: Callable, seed: int) -> list[dict]:
    """`rows` training rows in a seeded order, as batches (the same on every process)."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(dataset), generator=generator)[:rows].tolist()
    return [collate([dataset[i] for i in order[s:s + batch_size]]) for s in range(0, len(order), batch_size)]
