"""Importance: how much each weight matters. Plain callables (Torch-Pruning style).

An importance maps a target to an elementwise score tensor of its weight's shape; the
allocator sums it over blocks. Magnitude scores are stateless. Taylor first-order scores
accumulate |w * dL/dw| over optimiser steps. Movement scores (Sanh et al. 2020) are learned:
a mask parametrization passes gradients straight through to per-block scores.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from trimformer.allocate import Block, expand_blocks
from trimformer.masks import WeightMask
from trimformer.select import Target
from trimformer.structure import model_structure

Importance = Callable[[Target], torch.Tensor]


def weight_of(module: nn.Module) -> torch.Tensor:
    """The effective (masked) weight, detached."""
    return module.weight.detach()


def l1_importance(target: Target) -> torch.Tensor:
    """|w|: summed over a block this is the block's L1 norm."""
    return weight_of(target.module).abs().float()


def l2_importance(target: Target) -> torch.Tensor:
    """w^2: summed over a block this is the squared L2 norm (same ranking as the norm)."""
    return weight_of(target.module).float().pow(2)


def _original_param(module: nn.Module) -> nn.Parameter:
    """The trainable weight, under the parametrization if there is one."""
    if hasattr(module, "parametrizations") and "weight" in module.parametrizations:
        return module.parametrizations.weight.original
    return module.weight


def _add_to(sums: dict[str, torch.Tensor], name: str, contribution: torch.Tensor) -> None:
    """Add one step's scores to a running sum, restarting it when the shape changed (a shrink)."""
    if name in sums and sums[name].shape == contribution.shape:
        sums[name] += contribution
    else:
        sums[name] = contribution.clone()


class TaylorImportance:
    """Accumulates |w * dL/dw| at every optimiser step (call `accumulate` after backward,
    before the optimiser zeroes the gradients; `Pruner.attach` does this with a step pre-hook)."""

    def __init__(self, targets: Sequence[Target]):
        self.targets = list(targets)
        self.sums: dict[str, torch.Tensor] = {}
        self.steps = 0

    def accumulate(self) -> None:
        """Add this step's |w * grad| for every target that has a gradient."""
        with torch.no_grad():
            for t in self.targets:
                param = _original_param(t.module)
                if param.grad is None:
                    continue
                _add_to(self.sums, t.name, (weight_of(t.module) * param.grad).abs().float())
        self.steps += 1

    def reset(self) -> None:
        self.sums.clear()
        self.steps = 0

    def __call__(self, target: Target) -> torch.Tensor:
        if target.name not in self.sums:
            raise RuntimeError(
                f"no gradients were seen for {target.name!r}: Taylor importance needs training steps "
                "(run the evaluator or call accumulate() after backward)"
            )
        return self.sums[target.name]


class ChannelTaylorImportance:
    """First-order importance of whole FFN channels (Molchanov et al. 2019): every step adds
    |sum over the second linear's column j of w * dL/dw|, which is |sum over tokens of a_j * dL/da_j|
    for the channel's activation a_j, the loss change to first order if channel j is removed.
    Called on the first linear (the pruner's target), it returns that score spread evenly over the
    channel's row, so the allocator's row sum is the channel's score."""

    def __init__(self, outputs: dict[str, nn.Module]):
        self.outputs = outputs  # first FFN linear's name -> the second FFN linear it feeds
        self.sums: dict[str, torch.Tensor] = {}
        self.steps = 0

    @classmethod
    def for_ffn(cls, model: nn.Module, ffn_inputs: Iterable[str]) -> ChannelTaylorImportance:
        """Scores for the FFN layers whose first linear is named in `ffn_inputs`."""
        wanted = set(ffn_inputs)
        return cls({layer.ffn_in: model.get_submodule(layer.ffn_out) for layer in model_structure(model).layers
                    if layer.ffn_in in wanted})

    def accumulate(self) -> None:
        """Add this step's per-channel |sum of w * grad| for every second linear with a gradient."""
        with torch.no_grad():
            for name, module in self.outputs.items():
                param = _original_param(module)
                if param.grad is None:
                    continue
                _add_to(self.sums, name, (weight_of(module) * param.grad).sum(0).abs().float())
        self.steps += 1

    def __call__(self, target: Target) -> torch.Tensor:
        if target.name not in self.sums:
            raise RuntimeError(f"no gradients were seen for the FFN output of {target.name!r}: "
                               "channel Taylor importance needs training steps")
        weight = target.module.weight
        if weight.shape[0] != self.sums[target.name].numel():
            raise ValueError(f"{target.name!r} has {weight.shape[0]} channels, its second linear "
                             f"{self.sums[target.name].numel()}")
        return (self.sums[target.name] / weight.shape[1])[:, None].expand(weight.shape).to(weight.device)


class MovementMask(WeightMask):
    """Mask parametrization with learnable per-block scores and a straight-through estimator.

    The forward value is ``w * mask`` (the mask buffer, refreshed by the pruner from the scores);
    the gradient reaching the scores is ``sum over the block of dL/dw_eff * w``, as if the mask
    were the scores themselves. Scores are a plain tensor, not an nn.Parameter, so they never
    leak into the user's optimiser or state dict; the pruner owns their optimiser."""

    def __init__(self, mask: torch.Tensor, block: Block, init: float = 0.0):
        super().__init__(mask)
        rows, cols = block
        grid = (mask.shape[0] // rows, mask.shape[1] // cols)
        self.block = block
        self.scores = torch.full(grid, float(init), device=mask.device, requires_grad=True)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        scores = expand_blocks(self.scores, self.block).to(weight.dtype)
        return weight * (self.mask.to(weight.dtype) + scores - scores.detach())
