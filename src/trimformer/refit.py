"""Re-fit inside the attention epoch: when heads leave a layer's mask during hard-mode pruning, that
layer's attention output projection is re-fitted at once so its kept heads' columns and its bias emit
what the layer emitted a step before, with the heads it had then.

This is the heads stage's `compensate=lstsq` (compensate.py) moved into training. There the re-fit is
made on the fine-tuned weights and the attention epoch only chooses the heads (`taylor_hc`); its CPU
pairs gained on CoLA and lost on RTE, where the epoch's training of the heads that stay seems to
matter. Here the epoch's weights are re-fitted as each head goes, so the heads that stay keep what
they learnt and the layer does not lose the heads' work at one step.

Moments: a forward pre-hook on each output projection adds the second moments of `tokens` sampled
padding-free tokens of every training forward, all decayed by `decay` a forward, so a re-fit sees the
model of about the last 1 / (1 - decay) batches (all of them with the heads that now go). The fit is
written into the parametrization's `original` weight (the effective weight is original * mask). A layer
whose mask gains a head back is not re-fitted that step: the returning head's inputs were constant
while it was masked (its value rows were zero, so its context was its value bias). A resumed stage
starts with empty moments (the first re-fit after it sees fewer tokens). Every process of a
multi-process run sums its moments with the others' before a re-fit, so all compute the same weights.
"""

from __future__ import annotations

import torch
from torch import nn

from trimformer import dist
from trimformer.compensate import ChannelStats, solve_refit
from trimformer.structure import model_structure

__all__ = ["HeadRefit"]


class HeadRefit:
    """Keeps decayed input moments of every attention output projection of a model under hard-mode
    head masks (`MovementEngine`), and re-fits a projection's kept columns and bias whenever its layer
    loses heads. Call `after_step()` after the mask update of each optimiser step; `close()` at the end."""

    def __init__(self, model: nn.Module, tokens: int = 256, decay: float = 0.9, ridge: float = 1e-3, seed: int = 0):
        if tokens < 1 or not 0.0 < decay <= 1.0:
            raise ValueError(f"tokens must be >= 1 and decay in (0, 1]; got {tokens} and {decay}")
        self.tokens, self.decay, self.ridge = int(tokens), float(decay), float(ridge)
        self.linears = {layer.attn_out: model.get_submodule(layer.attn_out) for layer in model_structure(model).layers}
        for name, linear in self.linears.items():
            if not torch.nn.utils.parametrize.is_parametrized(linear, "weight") or linear.bias is None:
                raise ValueError(f"{name} needs a mask parametrization and a bias to be re-fitted in training")
        self.stats: dict[str, ChannelStats] = {}
        self.masks_seen: dict[str, torch.Tensor] = {}  # each projection's mask at the last training forward
        self.generator = torch.Generator().manual_seed(seed)
        self.picked: torch.Tensor | None = None  # this forward's sampled token positions (flat)
        self.refits = self.skipped = 0
        self.handles = [model.register_forward_pre_hook(self._before_forward, with_kwargs=True)]
        self.handles += [linear.register_forward_pre_hook(self._gatherer(name))
                         for name, linear in self.linears.items()]

    def _mask(self, name: str) -> torch.Tensor:
        return self.linears[name].parametrizations.weight[0].mask

    def _before_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.picked = None
        if not module.training:  # evaluation passes leave the moments alone
            return
        # The masks the moments below are gathered under: after the step, a change from these is a cut.
        self.masks_seen = {name: self._mask(name).detach().clone() for name in self.linears}
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        attention_mask = kwargs.get("attention_mask")
        if attention_mask is None:
            attention_mask = torch.ones(input_ids.shape[:2], dtype=torch.bool)
        valid = attention_mask.reshape(-1).bool().nonzero().squeeze(1).cpu()
        order = torch.randperm(valid.numel(), generator=self.generator)[: self.tokens]
        self.picked = valid[order].to(attention_mask.device)

    def _gatherer(self, name: str):
        def gather(_module: nn.Module, args: tuple) -> None:
            if self.picked is None:
                return
            inputs = args[0].detach()
            flat = inputs.reshape(-1, inputs.shape[-1])[self.picked].float()
            entry = self.stats.get(name)
            if entry is None:
                width = flat.shape[1]
                entry = self.stats[name] = ChannelStats(
                    0, torch.zeros(width, dtype=torch.float64, device=flat.device),
                    torch.zeros(width, width, dtype=torch.float64, device=flat.device))
            entry.count = entry.count * self.decay + flat.shape[0]
            entry.total.mul_(self.decay).add_(flat.sum(0).double())
            entry.gram.mul_(self.decay).add_((flat.T @ flat).double())
        return gather

    @torch.no_grad()
    def after_step(self) -> int:
        """Re-fit each projection whose layer lost heads since the last training forward (and gained
        none); returns how many were re-fitted."""
        fitted = 0
        for name, linear in self.linears.items():
            before, now = self.masks_seen.get(name), self._mask(name)
            if before is None or torch.equal(before, now):
                continue
            kept_before, kept_now = before.amax(0) > 0, now.amax(0) > 0
            if bool((kept_now & ~kept_before).any()) or not bool(kept_now.any()) or name not in self.stats:
                self.skipped += 1
                continue
            stats = self._summed(self.stats[name])
            original = linear.parametrizations.weight.original
            kept_weight, bias = solve_refit(original * before, linear.bias, kept_now, stats, self.ridge)
            original[:, kept_now] = kept_weight.to(original.dtype)
            linear.bias.copy_(bias.to(linear.bias.dtype))
            fitted += 1
        self.masks_seen = {}
        self.refits += fitted
        return fitted

    @staticmethod
    def _summed(stats: ChannelStats) -> ChannelStats:
        """The moments summed over every process (the same fit on each)."""
        if dist.world_size() == 1:
            return stats
        count = torch.tensor([float(stats.count)], dtype=torch.float64, device=stats.total.device)
        total, gram = stats.total.clone(), stats.gram.clone()
        dist.sum_over_ranks([count, total, gram])
        return ChannelStats(float(count.item()), total, gram)

    def close(self) -> None:
        """Remove the hooks."""
        for handle in self.handles:
            handle.remove()
        self.handles = []
