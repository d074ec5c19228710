"""Re-fit inside the attention epoch (refit.py): heads that leave a layer's mask are re-fitted into the
kept heads' output columns at once, from moments of training forwards only."""

from __future__ import annotations

import pytest
import torch

from tests.models import tiny_batch, tiny_bert
from tests.test_compensate import head_masks
from tests.test_pipeline import tiny_run_to_ffn
from trimformer.movement import MovementEngine
from trimformer.refit import HeadRefit
from trimformer.structure import model_structure

ATTN_OUT = "bert.encoder.layer.0.attention.output.dense"


def quiet_model():
    """The tiny BERT without dropout (training forwards are then repeatable) and with value biases
    that make a cut head's output matter, as in trained models."""
    model = tiny_bert()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    with torch.no_grad():
        model.bert.encoder.layer[0].attention.self.value.bias.normal_(0, 1.0)
    return model


def hard_engine(model) -> MovementEngine:
    names = [n for layer in model_structure(model).layers for n in layer.attention_linears]
    return MovementEngine(model, [{"op_names": names, "sparsity": 0.5}], warm_up_step=0, cool_down_beginning_step=10,
                          head_units=True, score="taylor")


def set_heads(model, engine: MovementEngine, keep_heads: dict[int, list[int]]) -> None:
    """Put whole-head masks into the engine's parametrizations, as its step would."""
    with torch.no_grad():
        for name, tensors in head_masks(model, keep_heads).items():
            engine.params[name].mask.copy_(tensors["weight"])


def attention_output(model, probe) -> torch.Tensor:
    """What layer 0's output projection emits on the probe's real tokens (an eval forward)."""
    seen = []
    handle = model.get_submodule(ATTN_OUT).register_forward_hook(lambda _m, _a, out: seen.append(out))
    model.eval()
    with torch.no_grad():
        model(**probe)
    handle.remove()
    return seen[0][probe["attention_mask"].bool()]


def test_a_refit_as_heads_leave_keeps_the_layer_output():
    probe = tiny_batch(batch=8, seq=12, seed=99)
    errors = {}
    for refitted in (False, True):
        model = quiet_model()
        engine = hard_engine(model)
        refit = HeadRefit(model, tokens=1000, decay=1.0)
        reference = attention_output(model, probe)
        assert refit.stats == {}  # evaluation forwards gather nothing
        layer1 = model.bert.encoder.layer[1].attention.output.dense.parametrizations.weight.original.clone()
        model.train()
        with torch.no_grad():
            for seed in range(6):
                model(**tiny_batch(batch=8, seq=12, seed=seed))
        assert float(refit.stats[ATTN_OUT].count) == sum(
            int(tiny_batch(batch=8, seq=12, seed=s)["attention_mask"].sum()) for s in range(6))
        set_heads(model, engine, {0: [1, 2]})  # heads 0 and 3 of layer 0 leave
        if refitted:
            assert refit.after_step() == 1  # layer 1 kept its heads: not re-fitted
        errors[refitted] = float((attention_output(model, probe) - reference).pow(2).mean())
        assert torch.equal(model.bert.encoder.layer[1].attention.output.dense.parametrizations.weight.original, layer1)
        refit.close()
    assert errors[True] < 0.1 * errors[False]


def plain_cut_error(probe, keep_heads: dict[int, list[int]]) -> float:
    """The attention output's error when the heads go with no re-fit."""
    model = quiet_model()
    engine = hard_engine(model)
    reference = attention_output(model, probe)
    set_heads(model, engine, keep_heads)
    return float((attention_output(model, probe) - reference).pow(2).mean())


def gather(model, seeds, autocast: bool = False) -> None:
    model.train()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        for seed in seeds:
            model(**tiny_batch(batch=8, seq=12, seed=seed))


def test_a_head_coming_back_re_enters_with_zero_columns():
    probe = tiny_batch(batch=8, seq=12, seed=99)
    model = quiet_model()
    engine = hard_engine(model)
    refit = HeadRefit(model, tokens=64, decay=0.8)
    reference = attention_output(model, probe)
    error = lambda: float((attention_output(model, probe) - reference).pow(2).mean())  # noqa: E731
    gather(model, range(8))
    assert float(refit.stats[ATTN_OUT].count) == pytest.approx(64 * (1 - 0.8 ** 8) / (1 - 0.8))  # 64 real tokens each
    set_heads(model, engine, {0: [1, 2, 3]})
    assert refit.after_step() == 1
    assert refit.after_step() == 0  # no training forward since: nothing to compare
    gather(model, [20])
    set_heads(model, engine, {0: [0, 1, 2, 3]})  # head 0 comes back
    assert refit.after_step() == 0 and refit.returns == 1
    original = model.get_submodule(ATTN_OUT).parametrizations.weight.original
    assert bool((original[:, :8] == 0).all())  # head_dim 8: it re-enters emitting nothing ...
    assert error() < 0.1 * plain_cut_error(probe, {0: [1, 2, 3]})  # ... so its share is not counted twice
    gather(model, range(30, 36))
    set_heads(model, engine, {0: [1, 2, 3]})
    assert refit.after_step() == 1
    gather(model, [40])
    set_heads(model, engine, {0: [0, 1, 3]})  # a swap: head 0 back, head 2 out; head 2 is re-fitted away
    assert refit.after_step() == 1 and refit.returns == 2
    assert error() < 0.1 * plain_cut_error(probe, {0: [1, 3]})
    refit.close()
    with pytest.raises(ValueError, match="mask parametrization"):
        HeadRefit(tiny_bert())


def test_moments_are_float64_under_bf16_autocast():
    probe = tiny_batch(batch=8, seq=12, seed=99)
    model = quiet_model()
    engine = hard_engine(model)
    refit = HeadRefit(model, tokens=1000, decay=1.0)
    reference = attention_output(model, probe)
    gather(model, range(6), autocast=True)
    assert refit.stats[ATTN_OUT].gram.dtype == torch.float64
    set_heads(model, engine, {0: [1, 2]})
    assert refit.after_step() == 1
    error = float((attention_output(model, probe) - reference).pow(2).mean())
    assert error < 0.1 * plain_cut_error(probe, {0: [1, 2]})


def test_a_resumed_refit_gathers_as_an_uninterrupted_one():
    batch = tiny_batch(batch=8, seq=12, seed=5)
    model = quiet_model()
    engine = hard_engine(model)
    first = HeadRefit(model, tokens=16, decay=0.9, seed=3)
    gather(model, range(3))
    saved = {**engine.state_tensors(), **first.state_tensors()}
    resumed_model = quiet_model()
    resumed_engine = hard_engine(resumed_model)
    resumed = HeadRefit(resumed_model, tokens=16, decay=0.9, seed=3)
    resumed.extra_state(resumed_engine)[1](saved, 3)  # what fit does with a checkpoint's extra tensors
    for m in (model, resumed_model):
        m.train()
        with torch.no_grad():
            m(**batch)  # the fourth forward samples the same tokens in both
    for name, stats in first.stats.items():
        assert torch.equal(stats.gram, resumed.stats[name].gram) and torch.equal(stats.count, resumed.stats[name].count)


def test_refit_recipe_validation():
    from trimformer.config import ConfigError
    from trimformer.recipe import load_recipe

    recipe = load_recipe("smoke", ["attention.compensate=lstsq", "heads.source=attention"])
    assert recipe.attention.compensate == "lstsq"
    with pytest.raises(ConfigError, match="set heads.source: attention"):
        load_recipe("smoke", ["attention.compensate=lstsq"])
    for wrong in ("attention.mode=soft", "attention.fade_steps=3"):
        with pytest.raises(ConfigError, match="hard mode without fading"):
            load_recipe("smoke", ["attention.compensate=lstsq", "heads.source=attention", wrong])


def test_refit_through_the_recipe(tmp_path):
    import re

    out = tiny_run_to_ffn(tmp_path, "attention.compensate=lstsq", "heads.source=attention",
                          "attention.compensate_tokens=32")
    found = re.search(r"attention: (\d+) output projection re-fits as heads left", (out / "run.log").read_text())
    assert found and int(found.group(1)) > 0
    assert (out / "stages" / "distil" / "done.json").is_file()  # the run went on through the cut
