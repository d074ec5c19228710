"""Prune to a measured latency target: "make it 3x faster" -> heads and FFN width per layer.

Latency of an encoder whose every layer keeps a fraction r of its heads and FFN channels is
close to affine in r: a fixed part (embeddings, classifier, layer norms) plus a part that
shrinks with r. So 1 / speedup is affine in r. We measure the real speedup of a few shapes
on this machine (random weights: latency does not depend on values), fit that line through
the measurements, solve for the target, and measure the chosen shape once more to check.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

from torch import nn

from trimformer.bench import compare_latency
from trimformer.shrink import LayerPlan, ShrinkPlan, apply_plan
from trimformer.structure import model_structure


@dataclass(frozen=True)
class ShapeChoice:
    """The uniform per-layer shape chosen for a target speedup, and what it measured."""

    target_speedup: float
    heads: int
    ffn: int
    measured_speedup: float
    calibration: list[tuple[float, float]]  # (keep fraction, measured speedup)

    def to_dict(self) -> dict:
        return asdict(self)


def shape_of(model: nn.Module, keep: float, ffn_multiple: int = 1) -> tuple[int, int]:
    """Heads and FFN width per layer for a keep fraction (at least one of each)."""
    st = model_structure(model)
    heads = max(1, min(st.num_heads, round(st.num_heads * keep)))
    ffn = max(ffn_multiple, round(st.intermediate_size * keep / ffn_multiple) * ffn_multiple)
    return heads, min(ffn, st.intermediate_size)


def shaped_copy(model: nn.Module, heads: int, ffn: int) -> nn.Module:
    """A copy of `model` cut to `heads` heads and `ffn` channels in every layer (for timing)."""
    st = model_structure(model)
    clone = copy.deepcopy(model).eval()
    plan = ShrinkPlan(st.family, st.num_heads, st.head_dim,
                      tuple(LayerPlan(range(heads), range(ffn)) for _ in st.layers))
    apply_plan(clone, plan)
    return clone


def choose_shape(model: nn.Module, target_speedup: float, batch_size: int = 32, seq_len: int = 128,
                 threads: int | None = None, repeats: int = 5, ffn_multiple: int = 1) -> ShapeChoice:
    """Pick the uniform shape whose measured speedup over `model` is closest to the target."""
    if target_speedup <= 1.0:
        raise ValueError(f"target speedup must be above 1, got {target_speedup}")

    def measure(keep: float) -> tuple[int, int, float]:
        heads, ffn = shape_of(model, keep, ffn_multiple)
        result = compare_latency(model, shaped_copy(model, heads, ffn), batch_size, seq_len, threads,
                                 warmup=1, repeats=repeats)
        return heads, ffn, result.speedup

    st = model_structure(model)
    points: list[tuple[float, float]] = []
    for keep in (0.5, 1.0 / target_speedup):
        heads, ffn, speedup = measure(keep)
        points.append((ffn / st.intermediate_size, speedup))
    best = None
    for _ in range(2):  # solve on the line through the two latest points, then check by measuring
        (r1, s1), (r2, s2) = points[-2], points[-1]
        slope = (1 / s2 - 1 / s1) / (r2 - r1) if r2 != r1 else 1.0
        keep = r2 + (1 / target_speedup - 1 / s2) / slope if slope else r2
        keep = min(1.0, max(1.0 / st.intermediate_size, keep))
        heads, ffn, speedup = measure(keep)
        points.append((ffn / st.intermediate_size, speedup))
        if best is None or abs(speedup - target_speedup) < abs(best[2] - target_speedup):
            best = (heads, ffn, speedup)
    return ShapeChoice(target_speedup=target_speedup, heads=best[0], ffn=best[1], measured_speedup=best[2],
                       calibration=points)
