"""Sparsity as a pure function of the step, like a learning-rate schedule.

Each schedule maps a step to the fraction (0..1) of the final sparsity reached by then;
the pruner multiplies by the target. Pure functions: resuming at step t gives the same
sparsity as never stopping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Constant:
    """The whole target from the start."""

    def __call__(self, step: int) -> float:
        return 1.0


@dataclass(frozen=True)
class Linear:
    """From 0 at `begin` to 1 at `end`, linearly."""

    begin: int
    end: int

    def __call__(self, step: int) -> float:
        if step < self.begin:
            return 0.0
        if step >= self.end or self.end <= self.begin:
            return 1.0
        return (step - self.begin) / (self.end - self.begin)


@dataclass(frozen=True)
class Cubic:
    """NNI's / Zhu & Gupta's cubic ramp: 0 until `warm_up`, then
    ``1 - (1 - (t - warm_up) / (cool_down - warm_up)) ** 3`` until `cool_down`, then 1."""

    warm_up: int
    cool_down: int

    def __call__(self, step: int) -> float:
        if step < self.warm_up:
            return 0.0
        if step >= self.cool_down or self.cool_down <= self.warm_up:
            return 1.0
        progress = (step - self.warm_up) / (self.cool_down - self.warm_up)
        return 1.0 - (1.0 - progress) ** 3


@dataclass(frozen=True)
class Iterative:
    """`rounds` equal steps of keep-ratio: after round r (1-based) the kept fraction is
    ``(1 - s) ** (r / rounds)`` of the weights, as the tutorial's 12 FFN rounds do. Round r
    starts at step ``(r - 1) * steps_per_round``. Returns the fraction of `target` reached."""

    rounds: int
    steps_per_round: int
    target: float

    def __call__(self, step: int) -> float:
        if self.target <= 0:
            return 1.0
        done = min(self.rounds, step // max(1, self.steps_per_round) + 1)
        sparsity = 1.0 - (1.0 - self.target) ** (done / self.rounds)
        return sparsity / self.target

    def round_of(self, step: int) -> int:
        """1-based round that `step` falls in."""
        return min(self.rounds, step // max(1, self.steps_per_round) + 1)


Schedule = Constant | Linear | Cubic | Iterative


def per_round_sparsity(target: float, rounds: int) -> float:
    """The fraction of the remaining weights to prune in each of `rounds` equal rounds."""
    return 1.0 - (1.0 - target) ** (1.0 / rounds) if target > 0 else 0.0


def sparsity_at(schedule: Schedule, target: float, step: int) -> float:
    """The sparsity a schedule asks for at `step`, never above `target`."""
    value = target * schedule(step)
    return min(target, max(0.0, value if math.isfinite(value) else target))


def ffn_layer_sparsities(ffn_names: list[str], heads_kept: list[int], num_heads: int, intermediate_size: int,
                         rule: str, sparsity: float) -> dict[str, float]:
    """Final FFN sparsity per layer (keyed by the FFN input linear's name): `fixed`, or the tutorial's
    rule (keep half as much FFN as the layer kept heads)."""
    targets = {}
    for name, kept in zip(ffn_names, heads_kept, strict=False):
        target = sparsity if rule == "fixed" else 1 - 0.5 * kept / num_heads
        # A layer that lost every head would lose its whole FFN under the tutorial's rule (the tutorial
        # drops such layers); keep one channel so the shapes stay valid.
        targets[name] = min(target, 1 - 1 / intermediate_size)
    return targets


def ffn_round_config(targets: dict[str, float], rounds: int, allocation: str,
                     last_round: tuple[dict[str, int], int] | None = None, multiple: int = 1) -> list[dict]:
    """One FFN round's config list: each layer its own per-round share, or one global ranking
    (`allocation="global"`, which needs one sparsity for all layers). `last_round` = (each layer's
    current width, the full width): per layer, cut to exactly round((1 - target) * full width)
    channels, rounded to a multiple of `multiple` (at least one, at most the current width; a layer
    already narrower than one multiple keeps its width), so the rounding of twelve rounds cannot leave
    a layer off its target. (The global cut is aligned by the FFN stage.)"""
    if last_round is not None and allocation != "global":
        widths, full = last_round
        kept = {name: round((1 - t) * full) for name, t in targets.items()}
        if multiple > 1:
            for name, k in kept.items():
                k = max(multiple, round(k / multiple) * multiple)
                # Rounded up past what the earlier rounds left: the multiple below that instead.
                kept[name] = k if k <= widths[name] else max(multiple, widths[name] // multiple * multiple)
        return [{"op_names": [name], "sparsity": max(0.0, 1 - kept[name] / widths[name])}
                for name, t in targets.items() if t > 0]
    if allocation == "global":
        if len(set(targets.values())) != 1:
            raise ValueError("ffn.allocation=global needs one FFN sparsity for all layers (rule: fixed)")
        share = per_round_sparsity(next(iter(targets.values())), rounds)
        return [{"op_names": list(targets), "total_sparsity": share,
                 "max_sparsity_per_layer": min(0.9, 3 * share)}] if share > 0 else []
    return [{"op_names": [name], "sparsity": per_round_sparsity(t, rounds)} for name, t in targets.items() if t > 0]
