"""Re-fit inside the attention epoch: when heads leave a layer's mask during hard-mode pruning, that
layer's attention output projection is re-fitted at once so its kept heads' columns and its bias emit
what the layer emitted a step before, with the heads it had then.

This is the heads stage's `compensate=lstsq` (compensate.py) moved into training. There the re-fit is
made on the fine-tuned weights and the attention epoch only chooses the heads (`taylor_hc`); its CPU
pairs gained on CoLA and lost on RTE, where the epoch's training of the heads that stay seems to
matter. Here the epoch's weights are re-fitted as each head goes, so the heads that stay keep what
they learnt and the layer does not lose the heads' work at one step.

Moments: a forward pre-hook on each output projection adds the second moments (float64, also under
bf16 autocast) of `tokens` sampled padding-free tokens of every training forward, all decayed by
`decay` a forward, so a re-fit sees the model of about the last 1 / (1 - decay) batches (all with the
heads that now go). The fit is written into the parametrization's `original` weight (the effective
weight is original * mask). A head that comes back re-enters with zero output columns: the kept ones
already emit its share (its stale columns would count it twice), and training regrows them. The
moments ride in the stage's checkpoints and the sampling is a function of (seed, rank, forward), so a
resumed stage re-fits as an uninterrupted one. Each of N processes samples `tokens` / N tokens of its
rows and the moments are summed over the processes before a fit, so all compute the same weights.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from trimformer import dist
from trimformer.compensate import ChannelStats, solve_refit
from trimformer.movement import MovementEngine
from trimformer.structure import model_structure

__all__ = ["HeadRefit"]


class HeadRefit:
    """Keeps decayed input moments of every attention output projection of a model under hard-mode
    head masks (`MovementEngine`), and re-fits a projection's kept columns and bias whenever its layer
    loses heads. Call `after_step()` after the mask update of each optimiser step; `close()` at the end."""

    def __init__(self, model: nn.Module, tokens: int = 256, decay: float = 0.9, ridge: float = 1e-3,
                 seed: int = 0) -> None:
        if tokens < 1 or not 0.0 < decay <= 1.0:
            raise ValueError(f"tokens must be >= 1 and decay in (0, 1]; got {tokens} and {decay}")
        self.tokens = max(1, int(tokens) // dist.world_size())  # this process's share of a batch's sample
        self.decay, self.ridge, self.seed = float(decay), float(ridge), int(seed)
        self.linears = {layer.attn_out: model.get_submodule(layer.attn_out) for layer in model_structure(model).layers}
        for name, linear in self.linears.items():
            if not torch.nn.utils.parametrize.is_parametrized(linear, "weight") or linear.bias is None:
                raise ValueError(f"{name} needs a mask parametrization and a bias to be re-fitted in training")
        self.stats: dict[str, ChannelStats] = {}
        self.columns_seen: dict[str, torch.Tensor] = {}  # each projection's kept columns at the last training forward
        self.forwards = 0  # training forwards seen: with the seed and rank, what the sampling draws from
        self.picked: tuple[torch.Tensor, torch.Tensor] | None = None  # this forward's token positions, 0/1 weights
        self.refits = self.returns = 0  # projections re-fitted; layers that got a head back
        self.handles = [model.register_forward_pre_hook(self._before_forward, with_kwargs=True)]
        self.handles += [linear.register_forward_pre_hook(self._gatherer(name))
                         for name, linear in self.linears.items()]

    def _columns(self, name: str) -> torch.Tensor:
        """The projection's input columns its mask keeps (whole heads in hard mode)."""
        return self.linears[name].parametrizations.weight[0].mask.amax(0) > 0

    def _before_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.picked = None
        if not module.training:  # evaluation passes leave the moments alone
            return
        # The masks the moments below are gathered under: after the step, a change from these is a cut.
        self.columns_seen = {name: self._columns(name) for name in self.linears}
        attention_mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        if attention_mask is None:
            input_ids = kwargs.get("input_ids", args[0] if args else None)
            attention_mask = torch.ones(input_ids.shape[:2], device=input_ids.device)
        valid = attention_mask.reshape(-1) > 0
        # Random keys in [1, 2) for real tokens and [0, 1) for padding: the top `tokens` are a uniform
        # sample of the real ones (padding only where a batch has fewer, weighted 0), with no host sync.
        generator = torch.Generator().manual_seed(self.seed + 1_000_003 * dist.rank() + 7919 * self.forwards)
        keys = torch.rand(valid.numel(), generator=generator, dtype=torch.float64).to(valid.device) + valid
        picked = keys.topk(min(self.tokens, valid.numel())).indices
        self.picked = (picked, valid[picked].double())
        self.forwards += 1

    def _gatherer(self, name: str) -> Callable[[nn.Module, tuple], None]:
        def gather(_module: nn.Module, args: tuple) -> None:
            if self.picked is None:
                return
            picked, weights = self.picked
            inputs = args[0].detach()
            # float64: autocast leaves it alone (bf16 products would carry more error than the ridge).
            flat = inputs.reshape(-1, inputs.shape[-1])[picked].double() * weights[:, None]
            entry = self.stats.get(name)
            if entry is None:
                width, device = flat.shape[1], flat.device
                entry = self.stats[name] = ChannelStats(torch.zeros((), dtype=torch.float64, device=device),
                                                        torch.zeros(width, dtype=torch.float64, device=device),
                                                        torch.zeros(width, width, dtype=torch.float64, device=device))
            entry.count = entry.count * self.decay + weights.sum()
            entry.total.mul_(self.decay).add_(flat.sum(0))
            entry.gram.mul_(self.decay).add_(flat.T @ flat)
        return gather

    @torch.no_grad()
    def after_step(self) -> int:
        """Re-fit each projection whose layer lost heads since the last training forward; returns how
        many were re-fitted."""
        fitted = 0
        for name, linear in self.linears.items():
            before, now = self.columns_seen.get(name), self._columns(name)
            if before is None or torch.equal(before, now):
                continue
            original = linear.parametrizations.weight.original
            stay, back = before & now, now & ~before
            if bool((before & ~now).any()):
                stats = self._summed(self.stats[name])
                kept_weight, bias = solve_refit(original * before, linear.bias, stay, stats, self.ridge)
                original[:, stay] = kept_weight.to(original.dtype)
                linear.bias.copy_(bias.to(linear.bias.dtype))
                fitted += 1
            if bool(back.any()):  # the kept columns emit its share already
                original[:, back] = 0
                self.returns += 1
        self.columns_seen = {}
        self.refits += fitted
        return fitted

    @staticmethod
    def _summed(stats: ChannelStats) -> ChannelStats:
        """The moments summed over every process (the same fit on each)."""
        if dist.world_size() == 1:
            return stats
        summed = ChannelStats(stats.count.clone(), stats.total.clone(), stats.gram.clone())
        dist.sum_over_ranks([summed.count, summed.total, summed.gram])
        return summed

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The moments summed over the processes (for checkpoints; call on every process)."""
        out = {}
        for name, stats in self.stats.items():
            summed = self._summed(stats)
            out.update({f"refit.{name}.count": summed.count.cpu(), f"refit.{name}.total": summed.total.cpu(),
                        f"refit.{name}.gram": summed.gram.cpu()})
        return out

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], step: int) -> None:
        """Restore `state_tensors()` (on the main process; the others restart from zero, so the sum
        over processes is the saved one) and the forward count (one training forward a step)."""
        device = next(iter(self.linears.values())).weight.device
        keep = 1.0 if dist.is_main() else 0.0
        self.stats = {name: ChannelStats(*(tensors[f"refit.{name}.{part}"].to(device) * keep
                                           for part in ("count", "total", "gram")))
                      for name in self.linears if f"refit.{name}.count" in tensors}
        self.forwards = step

    def step_hook(self, engine: MovementEngine) -> Callable[..., None]:
        """An optimiser step post-hook: the engine's mask update, then the re-fit of what it cut."""
        def hook(*_: object) -> None:
            engine.step()
            self.after_step()
        return hook

    def extra_state(self, engine: MovementEngine) -> tuple[Callable[[], dict], Callable[[dict, int], None]]:
        """`fit`'s extra_state: the engine's scores and masks with these moments."""
        def load(tensors: dict[str, torch.Tensor], step: int) -> None:
            engine.load_state_tensors(tensors, step)
            self.load_state_tensors(tensors, step)
        return lambda: {**engine.state_tensors(), **self.state_tensors()}, load

    def close(self) -> None:
        """Remove the hooks."""
        for handle in self.handles:
            handle.remove()
        self.handles = []
