"""Recipes: shipped ones load, overrides apply, mistakes are named."""

from __future__ import annotations

import pytest

from tests.bench_scripts import load_bench
from trimformer.config import ConfigError
from trimformer.recipe import load_recipe, shipped_recipes


def test_shipped_recipes_load():
    assert {"default", "nni-bert-mnli", "smoke"} <= set(shipped_recipes())
    for name in shipped_recipes():
        assert load_recipe(name).name == name
    nni = load_recipe("nni-bert-mnli")
    # the seed's hyper-parameters
    attention = (nni.attention.epochs, nni.attention.regular_scale, nni.attention.mode)
    assert nni.finetune.epochs == 3 and attention == (4, 10, "soft")
    assert (nni.distil.epochs, nni.ffn.rounds, nni.ffn.taylor_steps, nni.ffn.rule) == (5, 12, 2000, "tutorial")
    assert (nni.distil.alpha, nni.distil.temperature) == (0.1, 2.0)


def test_overrides_are_typed_and_nested():
    recipe = load_recipe("smoke", ["attention.regular_scale=20", "seed=7", "max_train_samples=null"])
    assert recipe.attention.regular_scale == 20.0 and recipe.seed == 7 and recipe.max_train_samples is None


@pytest.mark.parametrize("overrides, fragment", [
    (["attention.regular_scal=2"], "unknown key 'attention.regular_scal'"),
    (["ffn.rounds=0"], "ffn.rounds"),
    (["attention.mode=medium"], "attention.mode"),
    (["seed"], "not key=value"),
    (["attention.mode=soft", "attention.score=taylor"], "score 'taylor' ranks heads for hard mode"),
    (["attention.mode=hard", "attention.score=taylor", "attention.score_optimizer=adam"], "trains no scores"),
    (["attention.score=fisher"], "attention.score"),
    (["attention.mode=hard", "attention.taylor_decay=0.9"], "taylor_decay"),
    (["ffn.score=weights"], "ffn.score"),
    (["attention.mode=hard", "attention.taylor_blocks=output"], "taylor_blocks"),
    (["attention.average=0.5"], "the attention stage's masks change"),
    (["ffn.average=0.5"], "set ffn.recover"),
    (["attention.mode=soft", "attention.fade_steps=2"], "fade_steps fades out heads in hard mode"),
    (["distil.average=1.5"], "distil.average"),
])
def test_bad_overrides(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        load_recipe("smoke", overrides)


def test_trimformer_recipe_is_the_frontier_method():
    """`--recipe trimformer` must stay what the frontier measured: the default plus the method's switches."""
    frontier = load_bench("frontier")
    shipped = load_recipe("trimformer").model_dump()
    measured = load_recipe("default", frontier.TARGET_METHODS["taylor_reg"]).model_dump()
    assert {**shipped, "name": "default"} == measured


def test_every_frontier_method_is_a_valid_recipe():
    """A typo in a method's switches would otherwise surface only on the GPU machine, mid-run."""
    frontier = load_bench("frontier")
    for name, overrides in frontier.TARGET_METHODS.items():
        recipe = load_recipe("default", overrides)
        assert recipe.attention.mode == "hard" or name == "target", name
    assert load_recipe("default", frontier.TARGET_METHODS["taylor_dec"]).attention.taylor_decay == 0.97
    assert load_recipe("trimformer", ["attention.taylor_decay=0.9"]).attention.taylor_decay == 0.9
    assert load_recipe("default", frontier.TARGET_METHODS["taylor_chan"]).ffn.score == "channel"
    assert load_recipe("default", frontier.TARGET_METHODS["taylor_ra5"]).ffn.alpha == 0.5
    assert load_recipe("default", frontier.TARGET_METHODS["taylor_kd"]).distil.alpha == 0.0


def test_recipe_file(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: mine\nfinetune: {epochs: 1}\n")
    assert load_recipe(str(path)).finetune.epochs == 1
    path.write_text("finetune: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(str(path))
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_recipe(str(tmp_path / "missing.yaml"))


def test_seed_variants_of_frontier_methods_override_the_protocol_seed():
    """`taylor_ra5_s1025` runs after the protocol's `seed=1024` on the command line; its seed must win."""
    frontier = load_bench("frontier")
    variant = load_recipe("default", [*frontier.PROTOCOL, *frontier.TARGET_METHODS["taylor_ra5_s1025"]])
    base = load_recipe("default", [*frontier.PROTOCOL, *frontier.TARGET_METHODS["taylor_ra5"]])
    assert variant.seed == 1025 and base.seed == 1024
    assert {**variant.model_dump(), "seed": 1024} == base.model_dump()


def test_ffn_width_multiple_defaults_to_where_latency_is_timed():
    from trimformer.recipe import Bench, Ffn

    assert Ffn().width_multiple(Bench(), 1536) == 16
    assert Ffn().width_multiple(Bench(device="cuda"), 1536) == 64
    assert Ffn().width_multiple(Bench(), 64) == 1  # a toy FFN: steps of 16 would be too coarse
    assert Ffn(multiple=21).width_multiple(Bench(device="cuda"), 64) == 21
    with pytest.raises(ValueError):
        Ffn(multiple=0)


def test_frontier_methods_with_aligned_widths_get_their_own_latency_line(tmp_path):
    frontier = load_bench("frontier")
    _, reg = frontier.method_overrides("taylor_reg", 3.0)
    _, aligned = frontier.method_overrides("taylor_a16_s1025", 3.0)
    assert frontier.target_file(tmp_path, 3.0, reg) == tmp_path / "targets" / "x3.json"
    assert frontier.target_file(tmp_path, 3.0, aligned) == tmp_path / "targets" / "x3-m16.json"
    assert "ffn.multiple=1" in frontier.PROTOCOL  # the recorded points' widths: any


def test_shipped_recipes_choose_on_rows_set_aside_but_the_frontier_protocol_as_it_was_recorded():
    frontier = load_bench("frontier")
    assert load_recipe("default").select_rows == load_recipe("trimformer").select_rows == 500
    assert load_recipe("default", frontier.PROTOCOL).select_rows == 0  # every recorded point chose on dev


def test_the_aligned_frontier_targets_keep_the_harness_heads_on_multiples():
    """taylor_a16's committed shapes: the harness's heads, a wider FFN on a multiple of 16, recorded
    as timed for 16 so a run with ffn.multiple=16 applies them without re-splitting."""
    import json
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "bench" / "results" / "frontier_targets"
    for target in (2, 3, 5):
        old = json.loads((folder / f"x{target}.json").read_text())
        new = json.loads((folder / f"x{target}-m16.json").read_text())
        assert new["heads"] == old["heads"] and new["ffn"] % 16 == 0 and new["ffn"] > old["ffn"]
        assert new["ffn_multiple"] == 16 and new.get("head_ratio", 1.0) == 1.0
        assert new["target_speedup"] == old["target_speedup"]


@pytest.mark.parametrize("bad", [["attention.cool_down=1"], ["attention.warmup_ratio=0.8"]])
def test_attention_recover_lr_needs_a_cool_down_inside_the_stage(bad):
    assert load_recipe("default", ["attention.recover_lr=3e-5"]).attention.recover_lr == 3e-5
    with pytest.raises(ConfigError, match="recover_lr restarts the lr at the cool-down"):
        load_recipe("default", ["attention.recover_lr=3e-5", *bad])
