"""Physical shrink: the shrunk model computes what the masked model computed, with exactly the expected size."""

from __future__ import annotations

import importlib

import pytest
import torch

from tests.models import tiny_batch, tiny_bert, tiny_distilbert, tiny_roberta
from trimformer.masks import MaskDict, apply_masks
from trimformer.shrink import (
    EmptyAttention,
    LayerPlan,
    ShrinkCheckError,
    ShrinkPlan,
    apply_plan,
    layer_shapes,
    plan_from_masks,
    shrink,
)
from trimformer.structure import model_structure

# `trimformer.shrink` the attribute is the function; the module is reached through importlib.
shrink_mod = importlib.import_module("trimformer.shrink")

FAMILIES = {"bert": tiny_bert, "roberta": tiny_roberta, "distilbert": tiny_distilbert}


def randomize(model, seed: int):
    """Large random weights and biases, so a wrong shrink shows up far above 1e-5."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def random_masks(model, seed: int) -> tuple[MaskDict, list[set[int]], list[set[int]]]:
    """Head masks (layer 0: all heads, layer 1: none, others random), FFN masks on in/out/both, and
    some partial zeros in kept units. Returns the masks and the removed heads/channels per layer."""
    g = torch.Generator().manual_seed(seed)
    st = model_structure(model)
    n, d = st.num_heads, st.head_dim
    masks: MaskDict = {}
    heads_gone, ffn_gone = [], []
    for i, ls in enumerate(st.layers):
        coin = torch.rand(n, generator=g) < 0.5
        gone = set(range(n)) if i == 0 else set() if i == 1 else set(coin.nonzero().flatten().tolist())
        rows = torch.ones(n * d, st.hidden_size)
        for h in gone:
            rows[h * d:(h + 1) * d] = 0
        kept = sorted(set(range(n)) - gone)
        if kept:  # a partly masked head stays
            rows[kept[0] * d, :3] = 0
        for name in (ls.query, ls.key, ls.value):
            masks[name] = {"weight": rows.clone()}
        masks[ls.attn_out] = {"weight": rows.t().clone()}
        channels = (torch.rand(st.intermediate_size, generator=g) < 0.4).nonzero().flatten().tolist()
        ffn_in = torch.ones(st.intermediate_size, st.hidden_size)
        ffn_in[channels] = 0
        ffn_out = torch.ones(st.hidden_size, st.intermediate_size)
        ffn_out[:, channels] = 0
        where = i % 3  # 0: ffn_in rows only, 1: ffn_out columns only, 2: both
        if where != 1:
            masks[ls.ffn_in] = {"weight": ffn_in}
        if where != 0:
            masks[ls.ffn_out] = {"weight": ffn_out}
        heads_gone.append(gone)
        ffn_gone.append(set(channels))
    return masks, heads_gone, ffn_gone


def expected_params(dense: int, st, heads_gone, ffn_gone) -> int:
    """Each removed head takes q, k, v rows + biases and attn_out columns; each channel a row + bias + column."""
    h, d = st.hidden_size, st.head_dim
    per_head = 3 * d * (h + 1) + d * h
    per_channel = (h + 1) + h
    return dense - sum(len(g) * per_head for g in heads_gone) - sum(len(g) * per_channel for g in ffn_gone)


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_shrunk_equals_masked(family, seed):
    model = randomize(FAMILIES[family](num_layers=4, seed=seed), seed)
    st = model_structure(model)
    dense = count(model)
    masks, heads_gone, ffn_gone = random_masks(model, seed)
    batch = tiny_batch(seed=seed)
    apply_masks(model, masks)
    with torch.no_grad():
        masked = model(**batch).logits
    plan = shrink(model)  # reads the attached masks
    with torch.no_grad():
        shrunk = model(**batch).logits
    torch.testing.assert_close(shrunk, masked, atol=1e-5, rtol=0)
    assert count(model) == expected_params(dense, st, heads_gone, ffn_gone)
    assert [h for h, _ in layer_shapes(model)] == [st.num_heads - len(g) for g in heads_gone]
    assert model.config.trimformer_heads_per_layer == plan.heads_per_layer()
    assert model.config.trimformer_ffn_per_layer == [st.intermediate_size - len(g) for g in ffn_gone]
    assert isinstance(model.get_submodule(st.layers[0].attention), EmptyAttention)


def test_masks_argument_and_partial_head_kept():
    model = randomize(tiny_bert(), 0)
    ls = model_structure(model).layers[0]
    mask = torch.ones(32, 32)
    mask[8:12] = 0  # half of head 1's rows: the head stays, its zeros too
    plan = shrink(model, {ls.query: {"weight": mask}})
    assert plan.layers[0].heads_kept == (0, 1, 2, 3)
    assert model.get_submodule(ls.query).weight[8:12].abs().sum() == 0


def test_heads_need_all_four_masks():
    model = randomize(tiny_bert(), 0)
    ls = model_structure(model).layers[0]
    rows = torch.ones(32, 32)
    rows[:8] = 0
    masks = {name: {"weight": rows} for name in (ls.query, ls.key, ls.value)}
    assert plan_from_masks(model, masks).layers[0].heads_kept == (0, 1, 2, 3)
    masks[ls.attn_out] = {"weight": rows.t()}
    assert plan_from_masks(model, masks).layers[0].heads_kept == (1, 2, 3)


def test_restore_partial_brings_back_original_weights():
    model = randomize(tiny_bert(), 1)
    ls = model_structure(model).layers[0]
    original = model.get_submodule(ls.ffn_in).weight.detach().clone()
    mask = torch.ones(64, 32)
    mask[:10] = 0  # channels 0-9 removed
    mask[20, :5] = 0  # channel 20 partly masked: restored
    apply_masks(model, {ls.ffn_in: {"weight": mask}})
    shrink(model, restore_partial=True)
    torch.testing.assert_close(model.get_submodule(ls.ffn_in).weight, original[10:], atol=0, rtol=0)


def test_drop_empty_layers():
    model = randomize(tiny_distilbert(num_layers=3), 0)
    st = model_structure(model)
    ls = st.layers[1]
    zero = torch.zeros(32, 32)
    masks = {name: {"weight": zero} for name in ls.attention_linears}
    plan = shrink(model, masks, drop_empty_layers=True)
    assert [lp.dropped for lp in plan.layers] == [False, True, False]
    assert len(model.distilbert.transformer.layer) == 2 and model.config.n_layers == 2
    assert model.config.trimformer_dropped_layers == [1] and model.config.trimformer_layer_origin == [0, 2]
    model(**tiny_batch())  # still runs


def test_iterative_rounds_use_current_indices():
    model = randomize(tiny_bert(), 2)
    batch = tiny_batch()
    for _ in range(3):
        st = model_structure(model)
        masks = {}
        for ls in st.layers:
            w = model.get_submodule(ls.ffn_in).weight
            mask = torch.ones_like(w)
            mask[w.abs().sum(1).argsort()[:5]] = 0
            masks[ls.ffn_in] = {"weight": mask}
        shrink(model, masks, example_inputs=batch)
    assert model.config.trimformer_ffn_per_layer == [64 - 15, 64 - 15]


def test_check_catches_a_wrong_shrink(monkeypatch):
    model = randomize(tiny_roberta(), 0)
    ls = model_structure(model).layers[0]
    mask = torch.ones(64, 32)
    mask[:20] = 0  # input rows only: the removed channels still emit act(bias), which must be folded
    monkeypatch.setattr(shrink_mod, "fold_dead_channels", lambda *args: None)
    with pytest.raises(ShrinkCheckError, match="max abs"):
        shrink(model, {ls.ffn_in: {"weight": mask}})


def test_plan_json_roundtrip_and_errors():
    plan = ShrinkPlan("bert", 4, 8, (LayerPlan([0, 2], [1, 5, 7]), LayerPlan([], [0], dropped=True)))
    assert ShrinkPlan.from_json(plan.to_json()) == plan
    assert plan.heads_per_layer() == [2] and plan.ffn_per_layer() == [3]
    with pytest.raises(ValueError, match="not a ShrinkPlan"):
        ShrinkPlan.from_dict({"family": "bert"})


def test_apply_plan_validates():
    model = tiny_bert()
    with pytest.raises(ValueError, match="does not fit"):
        apply_plan(model, ShrinkPlan("bert", 4, 8, (LayerPlan([0], [0]),)))
    with pytest.raises(ValueError, match="sorted, unique"):
        apply_plan(model, ShrinkPlan("bert", 4, 8, (LayerPlan([1, 0], [0]), LayerPlan([0], [0]))))
    apply_masks(model, {"bert.encoder.layer.0.output.dense": {"weight": torch.ones(32, 64)}})
    with pytest.raises(ValueError, match="parametrizations"):
        apply_plan(model, ShrinkPlan("bert", 4, 8, (LayerPlan([0], [0]), LayerPlan([0], [0]))))


def test_bfloat16_keeps_dtype():
    model = randomize(tiny_bert(), 0).to(torch.bfloat16)
    ls = model_structure(model).layers[1]
    mask = torch.ones(64, 32)
    mask[::2] = 0
    shrink(model, {ls.ffn_in: {"weight": mask}}, atol=0.1)
    assert model.get_submodule(ls.ffn_in).weight.dtype == torch.bfloat16


def test_bad_mask_shape_changes_nothing():
    model = tiny_bert()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    name = model_structure(model).layers[0].ffn_in
    with pytest.raises(ValueError, match="has shape"):
        shrink(model, {name: {"weight": torch.zeros(64, 1)}})
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_top_level_names():
    import trimformer

    for name in ("shrink", "save_pruned", "load_pruned", "ModelSpeedup", "MovementPruner", "TaylorFOWeightPruner",
                 "TorchEvaluator", "LevelPruner", "L1NormPruner", "L2NormPruner"):
        assert callable(getattr(trimformer, name)), name
