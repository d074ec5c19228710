"""Prune to a measured latency target: "make it 3x faster" -> heads and FFN width per layer.

Latency is close to affine in the encoder's FLOPs: a fixed part (embeddings, layer norms,
softmax, the classifier, framework overhead) plus a part proportional to the matrix work. So
1 / speedup is affine in the kept FLOPs fraction x. We time a few uniform shapes against the
dense model on this machine (random weights: latency does not depend on values; dense and cut
interleaved in one process), fit that line by least squares, solve it for the target, turn the
FLOPs fraction into heads and FFN width per layer, then time the chosen shape to check and
refine once.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from torch import nn

from trimformer.bench import compare_latency
from trimformer.shrink import LayerPlan, ShrinkPlan, apply_plan
from trimformer.structure import ModelStructure, model_structure


class TargetOutOfReach(ValueError):
    """Even the smallest shape (one head, the fewest FFN channels a layer) misses the target by
    more than 10% where it was timed: the rest of the time is work that cutting heads and FFN
    channels does not shrink (embeddings, layer norms, hidden-width activations, kernel launches)."""


# How far below the target the smallest shape may land before the target counts as out of reach.
REACH_TOLERANCE = 0.9


@dataclass(frozen=True)
class ShapeChoice:
    """The uniform per-layer shape chosen for a target speedup, and what it measured."""

    target_speedup: float
    heads: int
    ffn: int
    measured_speedup: float
    calibration: list[tuple[float, float]]  # (kept encoder FLOPs fraction, measured speedup)
    head_ratio: float = 1.0  # the heads' kept share over the FFN's (shape_for_fraction)
    seq_len: int | None = None  # the length the FLOPs fractions were counted at (timed at)
    ffn_multiple: int = 1  # the FFN widths timed were multiples of this

    def to_dict(self) -> dict:
        return asdict(self)


def layer_flops(st: ModelStructure, heads: int, ffn: int, seq_len: int) -> int:
    """Multiply-adds x 2 of one encoder layer per sequence with `heads` heads and `ffn` channels."""
    width = heads * st.head_dim
    linears = 3 * st.hidden_size * width + width * st.hidden_size + 2 * st.hidden_size * ffn
    return 2 * seq_len * linears + 2 * 2 * seq_len * seq_len * width


def flops_fraction(st: ModelStructure, heads: int, ffn: int, seq_len: int) -> float:
    """Encoder FLOPs of a uniform shape over the dense encoder's."""
    return layer_flops(st, heads, ffn, seq_len) / layer_flops(st, st.num_heads, st.intermediate_size, seq_len)


def shape_for_fraction(st: ModelStructure, fraction: float, seq_len: int, ffn_multiple: int = 1,
                       head_ratio: float = 1.0) -> tuple[int, int]:
    """Heads and FFN width whose FLOPs fraction is closest to `fraction`: the heads keep `head_ratio`
    times the FFN's share (rounded, at most all of them), then the FFN width absorbs the rounding.
    head_ratio 1 cuts both alike; above 1 spends more of the budget on heads, fewer FFN channels."""
    fraction = min(1.0, max(0.0, fraction))
    dense = layer_flops(st, st.num_heads, st.intermediate_size, seq_len)
    head_share = layer_flops(st, st.num_heads, 0, seq_len) / dense  # of the dense layer's FLOPs
    ffn_keep = fraction / (head_ratio * head_share + 1 - head_share)
    heads = max(1, min(st.num_heads, round(st.num_heads * min(1.0, head_ratio * ffn_keep))))
    per_channel = 2 * seq_len * 2 * st.hidden_size
    rest = fraction * dense - layer_flops(st, heads, 0, seq_len)
    ffn = round(rest / per_channel / ffn_multiple) * ffn_multiple
    return heads, max(ffn_multiple, min(st.intermediate_size, ffn))


def shape_on_line(st: ModelStructure, calibration: list[tuple[float, float]], target_speedup: float,
                  seq_len: int, ffn_multiple: int = 1, head_ratio: float = 1.0) -> tuple[int, int]:
    """The shape whose FLOPs fraction the line fitted through `calibration` puts at the target."""
    a, b = _fit(calibration)
    fraction = (1.0 / target_speedup - a) / b if b else 1.0 / target_speedup
    return shape_for_fraction(st, fraction, seq_len, ffn_multiple, head_ratio)


def shape_of(model: nn.Module, keep: float, ffn_multiple: int = 1) -> tuple[int, int]:
    """Heads and FFN width per layer keeping a fraction `keep` of each (at least one of each)."""
    st = model_structure(model)
    heads = max(1, min(st.num_heads, round(st.num_heads * keep)))
    ffn = max(ffn_multiple, round(st.intermediate_size * keep / ffn_multiple) * ffn_multiple)
    return heads, min(ffn, st.intermediate_size)


def shaped_copy(model: nn.Module, heads: int | Sequence[int], ffn: int | Sequence[int]) -> nn.Module:
    """A copy of `model` cut to `heads` heads and `ffn` channels in every layer, or to one count per
    layer where a list is given (for timing)."""
    st = model_structure(model)
    n = len(st.layers)
    heads = [heads] * n if isinstance(heads, int) else list(heads)
    ffn = [ffn] * n if isinstance(ffn, int) else list(ffn)
    clone = copy.deepcopy(model).eval()
    plan = ShrinkPlan(st.family, st.num_heads, st.head_dim,
                      tuple(LayerPlan(range(h), range(f)) for h, f in zip(heads, ffn, strict=True)))
    apply_plan(clone, plan)
    return clone


def _fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least squares of 1 / speedup = a + b * x."""
    xs, ys = [p[0] for p in points], [1.0 / p[1] for p in points]
    n, mx, my = len(xs), sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx > 0 and n > 1 else 1.0
    return my - b * mx, b


def choose_shape(model: nn.Module, target_speedup: float, batch_size: int = 32, seq_len: int = 128,
                 threads: int | None = None, repeats: int = 10, ffn_multiple: int = 1,
                 head_ratio: float = 1.0, *, device: str = "cpu", bf16: bool = False,
                 compile: bool = False) -> ShapeChoice:
    """Pick the uniform shape whose measured speedup over `model` is closest to the target, timed
    on `device` (`bf16`, `compile`: as in `trimformer.bench.time_models`)."""
    if target_speedup <= 1.0:
        raise ValueError(f"target speedup must be above 1, got {target_speedup}")
    st = model_structure(model)

    def measure(heads: int, ffn: int) -> float:
        result = compare_latency(model, shaped_copy(model, heads, ffn), batch_size, seq_len, threads,
                                 warmup=1, repeats=repeats, device=device, bf16=bf16, compile=compile)
        return result.speedup

    points: list[tuple[float, float]] = []
    tried: dict[tuple[int, int], float] = {}

    def timed(shape: tuple[int, int]) -> tuple[int, int]:
        """Time `shape` once (a shape already timed is not timed again) and add it to the line."""
        if shape not in tried:
            tried[shape] = measure(*shape)
            points.append((flops_fraction(st, *shape, seq_len), tried[shape]))
        return shape

    def settle() -> tuple[int, int]:
        """Solve on the line through every timing so far; time the answer if it is new."""
        return timed(shape_on_line(st, points, target_speedup, seq_len, ffn_multiple, head_ratio))

    for fraction in (0.6, 0.35, min(0.9, 1.0 / target_speedup)):  # each timed, a repeated shape too
        shape = shape_for_fraction(st, fraction, seq_len, ffn_multiple, head_ratio)
        tried[shape] = measure(*shape)
        points.append((flops_fraction(st, *shape, seq_len), tried[shape]))
    for _ in range(3):  # solve on the fitted line, time the answer, refit with it
        settle()
    # The answer comes from the line fitted through every timing, not from the single timing that
    # happened to land nearest the target: on a busy or noisy machine one timing can be off by 10%.
    heads, ffn = settle()
    if tried[(heads, ffn)] < REACH_TOLERANCE * target_speedup:
        # Far short of the target: is any shape fast enough? The smallest is the fastest there is
        # (where timings are mostly noise, as with a tiny model, the line alone can mislead).
        # Timed afresh, the better of two readings counts: one slow reading must not end a run.
        smallest = shape_for_fraction(st, 0.0, seq_len, ffn_multiple, head_ratio)
        reached = max(measure(*smallest), tried.get(smallest, 0.0))
        if reached < REACH_TOLERANCE * target_speedup:
            # Training to a shape far slower than asked for, cut to the bone as well, helps nobody.
            where = f"{device}{', bf16' if bf16 else ''}{', compiled' if compile else ''}"
            elsewhere = "" if str(device) == "cpu" else ", or bench.device=cpu"
            raise TargetOutOfReach(
                f"target speedup x{target_speedup:g} is out of reach timed on {where} at batch {batch_size} x "
                f"{seq_len}: the smallest shape (1 head and {smallest[1]} FFN channels a layer) measured "
                f"x{reached:.2f}. Ask for a lower target, or time where the matrix work dominates (a larger "
                f"bench.batch_size{elsewhere})")
        if smallest not in tried:
            points.append((flops_fraction(st, *smallest, seq_len), reached))
        tried[smallest] = reached
        heads, ffn = settle()  # within reach: solve again with the fastest shape on the line
        if tried[(heads, ffn)] < REACH_TOLERANCE * target_speedup:
            heads, ffn = _bisect_for_reach(st, (heads, ffn), smallest, target_speedup, seq_len, ffn_multiple,
                                           head_ratio, tried, timed)
    return ShapeChoice(target_speedup=target_speedup, heads=heads, ffn=ffn, measured_speedup=tried[(heads, ffn)],
                       calibration=points, head_ratio=head_ratio, seq_len=seq_len, ffn_multiple=ffn_multiple)


def _bisect_for_reach(st: ModelStructure, missed: tuple[int, int], fastest: tuple[int, int], target: float,
                      seq_len: int, ffn_multiple: int, head_ratio: float, tried: dict[tuple[int, int], float],
                      timed: Callable[[tuple[int, int]], tuple[int, int]], steps: int = 4) -> tuple[int, int]:
    """Latency off the line (a band of slow widths): halve the FLOPs fraction between a shape that
    missed the target and one that reached it (`timed` times a shape into `tried`), then answer with
    the least-cut timed shape within 10% of the target (at worst `fastest`)."""
    lo, hi = flops_fraction(st, *fastest, seq_len), flops_fraction(st, *missed, seq_len)
    for _ in range(steps):
        shape = timed(shape_for_fraction(st, (lo + hi) / 2, seq_len, ffn_multiple, head_ratio))
        if tried[shape] >= REACH_TOLERANCE * target:
            lo = flops_fraction(st, *shape, seq_len)
        else:
            hi = flops_fraction(st, *shape, seq_len)
    reaching = [shape for shape, speedup in tried.items() if speedup >= REACH_TOLERANCE * target]
    return max(reaching, key=lambda shape: flops_fraction(st, *shape, seq_len))
