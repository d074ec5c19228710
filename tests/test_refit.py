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
        assert refit.stats[ATTN_OUT].count == sum(int(tiny_batch(batch=8, seq=12, seed=s)["attention_mask"].sum())
                                                  for s in range(6))
        set_heads(model, engine, {0: [1, 2]})  # heads 0 and 3 of layer 0 leave
        if refitted:
            assert refit.after_step() == 1  # layer 1 kept its heads: not re-fitted
        errors[refitted] = float((attention_output(model, probe) - reference).pow(2).mean())
        assert torch.equal(model.bert.encoder.layer[1].attention.output.dense.parametrizations.weight.original, layer1)
        refit.close()
    assert errors[True] < 0.1 * errors[False]


def test_a_head_coming_back_is_not_refitted():
    model = quiet_model()
    engine = hard_engine(model)
    refit = HeadRefit(model, tokens=8, decay=0.5)
    model.train()
    batch = tiny_batch(batch=4, seq=10)
    with torch.no_grad():
        model(**batch)
    assert refit.stats[ATTN_OUT].count <= 8  # a sample of the batch's tokens
    set_heads(model, engine, {0: [1, 2, 3]})
    assert refit.after_step() == 1
    assert refit.after_step() == 0  # no training forward since: nothing to compare
    with torch.no_grad():
        model(**batch)
    weight = model.get_submodule(ATTN_OUT).parametrizations.weight.original.clone()
    set_heads(model, engine, {0: [0, 2, 3]})  # head 0 returns as head 1 goes
    assert refit.after_step() == 0 and refit.skipped == 1
    assert torch.equal(model.get_submodule(ATTN_OUT).parametrizations.weight.original, weight)
    refit.close()
    with pytest.raises(ValueError, match="mask parametrization"):
        HeadRefit(tiny_bert())


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
