"""Schedules are pure functions of the step; cubic matches NNI's formula."""

from __future__ import annotations

import pytest

from trimformer.schedule import (
    Constant,
    Cubic,
    Iterative,
    Linear,
    ffn_layer_sparsities,
    ffn_round_config,
    per_round_sparsity,
    sparsity_at,
)


def nni_cubic(step: int, warm_up: int, cool_down: int, total: float) -> float:
    # The formula in NNI's movement pruner / Zhu & Gupta (2017), written out independently.
    if step < warm_up:
        return 0.0
    if step >= cool_down:
        return total
    return total - total * (1 - (step - warm_up) / (cool_down - warm_up)) ** 3


@pytest.mark.parametrize("step", [0, 9, 10, 11, 35, 55, 89, 90, 120])
def test_cubic_matches_nni(step):
    assert sparsity_at(Cubic(10, 90), 0.8, step) == pytest.approx(nni_cubic(step, 10, 90, 0.8))


def test_cubic_phases():
    sched = Cubic(warm_up=100, cool_down=400)
    assert sched(50) == 0.0  # warm-up: nothing pruned
    assert sched(250) == pytest.approx(1 - 0.5 ** 3)  # middle
    assert sched(400) == 1.0 and sched(1000) == 1.0  # cool-down: the full target


def test_linear_and_constant():
    assert Constant()(0) == 1.0
    assert Linear(0, 10)(5) == 0.5 and Linear(0, 10)(20) == 1.0 and Linear(5, 10)(0) == 0.0


def test_iterative_rounds_compound_to_target():
    sched = Iterative(rounds=12, steps_per_round=10, target=0.5)
    assert sparsity_at(sched, 0.5, 0) == pytest.approx(per_round_sparsity(0.5, 12))
    assert sparsity_at(sched, 0.5, 119) == pytest.approx(0.5)
    kept = 1.0
    for _ in range(12):
        kept *= 1 - per_round_sparsity(0.5, 12)
    assert kept == pytest.approx(0.5)
    assert sched.round_of(25) == 3


def test_ffn_layer_sparsities_fixed_and_tutorial_rule():
    names = ["l0.ffn", "l1.ffn", "l2.ffn"]
    assert ffn_layer_sparsities(names, [12, 6, 0], 12, 1536, "fixed", 0.5) == dict.fromkeys(names, 0.5)
    tutorial = ffn_layer_sparsities(names, [12, 6, 0], 12, 1536, "tutorial", 0.5)
    assert tutorial["l0.ffn"] == pytest.approx(0.5) and tutorial["l1.ffn"] == pytest.approx(0.75)
    assert tutorial["l2.ffn"] == pytest.approx(1 - 1 / 1536)  # a headless layer keeps one channel


def test_ffn_round_config_per_layer_and_global():
    per_layer = ffn_round_config({"a": 0.5, "b": 0.0}, 12, "layer")
    assert per_layer == [{"op_names": ["a"], "sparsity": pytest.approx(per_round_sparsity(0.5, 12))}]
    (group,) = ffn_round_config({"a": 0.75, "b": 0.75}, 12, "global")
    share = per_round_sparsity(0.75, 12)
    assert group["op_names"] == ["a", "b"] and group["total_sparsity"] == pytest.approx(share)
    assert group["max_sparsity_per_layer"] == pytest.approx(min(0.9, 3 * share))
    assert ffn_round_config({"a": 0.0, "b": 0.0}, 12, "global") == []
    with pytest.raises(ValueError, match="one FFN sparsity"):
        ffn_round_config({"a": 0.5, "b": 0.75}, 12, "global")


def test_the_last_per_layer_round_lands_exactly_on_the_target():
    def final_width(full: int, kept: int, rounds: int, exact_last: bool) -> int:
        targets, width = {"a": 1 - kept / full}, full
        for r in range(rounds):
            last = ({"a": width}, full) if exact_last and r == rounds - 1 else None
            (entry,) = ffn_round_config(targets, rounds, "layer", last)
            width -= int(round(entry["sparsity"] * width))  # what topk_keep removes
        return width

    assert final_width(1536, 512, 12, exact_last=False) == 511  # equal shares, rounded each round
    assert final_width(1536, 512, 12, exact_last=True) == 512
    assert final_width(64, 42, 3, exact_last=True) == 42
    # global allocation keeps its one ranking: the last round is not made per layer
    (group,) = ffn_round_config({"a": 0.5, "b": 0.5}, 12, "global", ({"a": 40, "b": 40}, 64))
    assert group["op_names"] == ["a", "b"]


def test_the_last_per_layer_round_rounds_each_width_to_the_multiple():
    """ffn.multiple: 1088 of 1536 is already a multiple of 64; a fixed 0.45 (845 channels) lands on
    848 with 16 and on 832 with 64; never under one multiple, and never above what the earlier rounds
    left (d: 1328 rounds up past its 1325, so 1312; e: 10 channels left, under one multiple, stay)."""
    targets = {"a": 0.45, "b": 1 - 1088 / 1536, "c": 0.999, "d": 1 - 1321 / 1536, "e": 0.999}
    last = ({"a": 900, "b": 1100, "c": 100, "d": 1325, "e": 10}, 1536)

    def kept(multiple: int) -> dict[str, int]:
        return {e["op_names"][0]: round((1 - e["sparsity"]) * last[0][e["op_names"][0]])
                for e in ffn_round_config(targets, 12, "layer", last, multiple=multiple)}

    assert kept(16) == {"a": 848, "b": 1088, "c": 16, "d": 1312, "e": 10}
    assert kept(64) == {"a": 832, "b": 1088, "c": 64, "d": 1280, "e": 10}
    assert kept(1) == {"a": 845, "b": 1088, "c": 2, "d": 1321, "e": 2}
