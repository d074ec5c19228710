"""FFN cut compensation: moments over real tokens only, and a least-squares re-fit that makes a cut cost less."""

from __future__ import annotations

import pytest
import torch

from tests.models import tiny_batch, tiny_bert
from tests.test_pipeline import tiny_run_to_ffn
from trimformer.compensate import (
    ChannelStats,
    collect_channel_stats,
    compensate_cut,
    compensate_heads,
    compensate_linear,
    head_column_keeps,
)
from trimformer.masks import apply_masks
from trimformer.shrink import shrink

FFN_IN, FFN_OUT = "bert.encoder.layer.0.intermediate.dense", "bert.encoder.layer.0.output.dense"


def test_moments_skip_padding_tokens():
    model = tiny_bert()
    batch = tiny_batch()  # row 0 is half padding
    seen = []
    handle = model.get_submodule(FFN_OUT).register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    stats = collect_channel_stats(model, [FFN_OUT], [batch])[FFN_OUT]
    handle.remove()
    tokens = seen[0][batch["attention_mask"].bool()].double()
    assert stats.count == int(batch["attention_mask"].sum()) == tokens.shape[0]
    assert torch.allclose(stats.total, tokens.sum(0))
    assert torch.allclose(stats.gram, tokens.T @ tokens)


def test_compensation_modes_on_a_linear():
    torch.manual_seed(0)
    linear = torch.nn.Linear(6, 3)
    inputs = torch.randn(500, 6).double() + torch.tensor([2.0, 0, 0, 1.0, 0, 0], dtype=torch.float64)
    inputs[:, 5] = 0.9 * inputs[:, 0] + 0.1 * torch.randn(500).double()  # a channel the others explain
    stats = ChannelStats(500, inputs.sum(0), inputs.T @ inputs)
    keep = torch.tensor([False, True, True, True, True, True])  # channel 0 (mean 2) goes, its near copy stays
    reference = linear(inputs.float())

    def cut_error(compensate: bool) -> float:
        copy = torch.nn.Linear(6, 3)
        copy.load_state_dict(linear.state_dict())
        if compensate:
            compensate_linear(copy, keep, stats)
        with torch.no_grad():
            copy.weight[:, ~keep] = 0
            return float((copy(inputs.float()) - reference).pow(2).mean())

    assert cut_error(True) < 0.01 * cut_error(False)  # the mean restored, the near copy explains the rest
    heavy = torch.nn.Linear(6, 3)
    heavy.load_state_dict(linear.state_dict())
    compensate_linear(heavy, keep, stats, ridge=1e3)  # a ridge that large shrinks the kept columns
    assert heavy.weight[:, keep].norm() < 0.1 * linear.weight[:, keep].norm()
    with pytest.raises(ValueError, match="second moments"):
        compensate_linear(linear, keep, ChannelStats(500, inputs.sum(0), None))


def test_compensated_cut_stays_closer_to_the_uncut_model():
    model = tiny_bert(ffn=64)
    with torch.no_grad():
        model.get_submodule(FFN_IN).bias.normal_(0, 1.0)
    batches = [tiny_batch(batch=8, seq=12, seed=s) for s in range(6)]
    probe = tiny_batch(batch=8, seq=12, seed=99)

    def ffn_output(m) -> torch.Tensor:  # what layer 0's second FFN linear emits on the probe's real tokens
        seen = []
        handle = m.get_submodule(FFN_OUT).register_forward_hook(lambda _m, _a, out: seen.append(out))
        with torch.no_grad():
            m(**probe)
        handle.remove()
        return seen[0][probe["attention_mask"].bool()]

    reference = ffn_output(model)
    weight = model.get_submodule(FFN_IN).weight
    keep = torch.ones(64, dtype=torch.bool)
    keep[::2] = False  # remove half the channels of layer 0
    masks = {FFN_IN: {"weight": keep[:, None].float().expand_as(weight).clone()}}

    def error(compensate: bool) -> float:
        copy = tiny_bert(ffn=64)
        with torch.no_grad():  # masked channels emit gelu(bias), which shrink folds into the next bias
            copy.get_submodule(FFN_IN).bias.copy_(model.get_submodule(FFN_IN).bias)
        if compensate:
            compensate_cut(copy, {FFN_OUT: keep}, batches)
        shrink(copy, masks)
        assert copy.get_submodule(FFN_OUT).in_features == 32
        return float((ffn_output(copy) - reference).pow(2).mean())

    assert error(True) < 0.5 * error(False)  # 0.26 here; 48x worse when shrink counted the constants twice


def test_compensation_through_the_recipe(tmp_path):
    out = tiny_run_to_ffn(tmp_path, "ffn.compensate=lstsq", "ffn.compensate_rows=8")
    from trimformer.bench import layer_widths
    from trimformer.io import load_pruned

    _, ffn = layer_widths(load_pruned(out / "stages" / "ffn" / "model"))
    assert sum(ffn) < 2 * 64
    log = (out / "run.log").read_text()
    assert log.count("2 second FFN linears re-fitted by least squares") == 3  # once per round (smoke: 3)


def head_masks(model, keep_heads: dict[int, list[int]]) -> dict:
    """Whole-head masks for the layers named (layer index -> heads kept), head_dim 8."""
    from trimformer.plan import whole_head_masks
    from trimformer.structure import model_structure

    structure, masks = model_structure(model), {}
    for index, kept in keep_heads.items():
        keep = torch.zeros(structure.num_heads, dtype=torch.bool)
        keep[kept] = True
        masks.update(whole_head_masks(model, structure.layers[index], keep, structure.head_dim))
    return masks


def test_head_column_keeps_follow_the_heads_shrink_removes():
    model = tiny_bert()  # 4 heads of 8
    masks = head_masks(model, {0: [0, 2], 1: [0, 1, 2, 3]})
    attn_out = "bert.encoder.layer.0.attention.output.dense"
    masks[attn_out]["weight"][0, 8:16] = 1  # head 1 partly kept: shrink keeps it, so it is not re-fitted away
    keeps = head_column_keeps(model, masks)
    assert list(keeps) == [attn_out]  # layer 1 loses nothing
    assert keeps[attn_out].tolist() == [True] * 24 + [False] * 8  # heads 0-2 stay, head 3 goes


def test_head_compensation_stays_closer_to_the_uncut_attention():
    model = tiny_bert()
    with torch.no_grad():  # value biases make the cut heads' mean output matter, as in trained models
        model.bert.encoder.layer[0].attention.self.value.bias.normal_(0, 1.0)
    batches = [tiny_batch(batch=8, seq=12, seed=s) for s in range(6)]
    probe = tiny_batch(batch=8, seq=12, seed=99)
    attn_out = "bert.encoder.layer.0.attention.output.dense"

    def attention_output(m) -> torch.Tensor:  # what layer 0's output projection emits on real tokens
        seen = []
        handle = m.get_submodule(attn_out).register_forward_hook(lambda _m, _a, out: seen.append(out))
        with torch.no_grad():
            m(**probe)
        handle.remove()
        return seen[0][probe["attention_mask"].bool()]

    reference = attention_output(model)

    def error(compensate: bool) -> float:
        copy = tiny_bert()
        copy.load_state_dict(model.state_dict())
        masks = head_masks(copy, {0: [0, 3]})
        if compensate:
            assert compensate_heads(copy, masks, batches) == (1, sum(int(b["attention_mask"].sum()) for b in batches))
        shrink(copy, masks, restore_partial=True)
        assert copy.get_submodule(attn_out).in_features == 16
        return float((attention_output(copy) - reference).pow(2).mean())

    assert error(True) < 0.1 * error(False)  # 0.0007 here: the cut heads mostly emitted their value biases


def test_head_compensation_through_the_recipe(tmp_path):
    from trimformer.io import load_pruned
    from trimformer.plan import ShrinkPlan

    out = tiny_run_to_ffn(tmp_path, "heads.compensate=lstsq", "heads.compensate_rows=8")
    plan = ShrinkPlan.from_json((out / "stages" / "heads" / "model" / "plan.json").read_text())
    cut_layers = sum(len(lp.heads_kept) < 4 for lp in plan.layers)
    assert cut_layers > 0
    log = (out / "run.log").read_text()
    assert f"heads: {cut_layers} attention output projections re-fitted by least squares" in log
    tuned = load_pruned(out / "stages" / "finetune" / "model")
    cut = load_pruned(out / "stages" / "heads" / "model")
    layer = next(i for i, lp in enumerate(plan.layers) if len(lp.heads_kept) < 4)
    columns = torch.cat([torch.arange(h * 8, (h + 1) * 8) for h in plan.layers[layer].heads_kept])  # head_dim 8
    weight = lambda m: m.bert.encoder.layer[layer].attention.output.dense.weight  # noqa: E731
    assert not torch.allclose(weight(cut), weight(tuned)[:, columns])  # a plain cut keeps the kept columns as they are


def test_head_compensation_needs_whole_head_cuts():
    from trimformer.config import ConfigError
    from trimformer.recipe import load_recipe

    for wrong in ("heads.restore_partial=false", "heads.source=attention"):
        with pytest.raises(ConfigError, match="needs heads.source: finetune and heads.restore_partial"):
            load_recipe("smoke", ["heads.compensate=lstsq", wrong])
    model = tiny_bert()
    masks = head_masks(model, {0: [0]})
    apply_masks(model, masks)
    with pytest.raises(ValueError, match="without mask parametrizations"):
        compensate_heads(model, masks, [tiny_batch()])


def test_head_compensation_skips_layers_shrink_drops():
    model = tiny_bert()
    masks = head_masks(model, {0: [], 1: [1]})
    first, second = (f"bert.encoder.layer.{i}.attention.output.dense" for i in (0, 1))
    assert list(head_column_keeps(model, masks, drop_empty_layers=True)) == [second]  # layer 0 goes whole
    assert head_column_keeps(model, masks)[first].sum() == 0  # kept as a layer: only its bias is re-fitted
