"""The engine: exact sparsity, whole blocks, per-head auto masks, masked forward, Taylor vs L1."""

from __future__ import annotations

import pytest
import torch

from tests.models import tiny_batch, tiny_bert
from trimformer import L1NormPruner, L2NormPruner, LevelPruner, Pruner, load_masks, save_masks
from trimformer.structure import model_structure

ENCODER_LINEARS = [{"op_types": ["Linear"], "op_partial_names": ["bert.encoder"]}]


def cfg(**kw):
    return [{**ENCODER_LINEARS[0], **kw}]


def sparsity(mask):
    return 1.0 - float(mask.float().mean())


@pytest.mark.parametrize("cls, granularity", [(LevelPruner, "finegrained"), (L1NormPruner, "out_channel"),
                                              (L2NormPruner, "out_channel")])
def test_presets_reach_exact_per_layer_sparsity(cls, granularity):
    model = tiny_bert()
    _, masks = cls(model, cfg(sparsity=0.5)).compress()
    assert len(masks) == 12
    for name, m in masks.items():
        w = m["weight"]
        assert w.shape == model.get_submodule(name).weight.shape
        assert sparsity(w) == pytest.approx(0.5)
        if granularity == "out_channel":  # whole rows
            assert torch.all((w.sum(1) == 0) | (w.sum(1) == w.shape[1]))


def test_l1_channels_are_the_smallest_rows():
    model = tiny_bert()
    name = "bert.encoder.layer.0.intermediate.dense"
    _, masks = L1NormPruner(model, [{"op_names": [name], "sparsity": 0.25}]).compress()
    norms = model.get_submodule(name).parametrizations.weight.original.abs().sum(1)
    pruned_rows = (masks[name]["weight"].sum(1) == 0).nonzero().flatten()
    assert set(pruned_rows.tolist()) == set(torch.argsort(norms)[:16].tolist())


@pytest.mark.parametrize("block", [(8, 8), (4, 16), (1, 32), (-1, 4)])
def test_block_masks_are_whole_blocks(block):
    model = tiny_bert()
    pruner = Pruner(model, cfg(sparsity=0.5, granularity=list(block)))
    masks = pruner.update_masks(1.0)
    for name, m in masks.items():
        w = m["weight"]
        rows = w.shape[0] if block[0] == -1 else block[0]
        cols = block[1]
        grid = w.reshape(w.shape[0] // rows, rows, w.shape[1] // cols, cols).sum(dim=(1, 3))
        assert torch.all((grid == 0) | (grid == rows * cols)), name
        assert sparsity(w) == pytest.approx(0.5)


def test_auto_masks_line_up_per_head_and_ffn_channels_are_coupled():
    model = tiny_bert()
    structure = model_structure(model)
    hd = structure.head_dim
    pruner = Pruner(model, cfg(sparsity=0.5), granularity="auto")
    masks = pruner.update_masks(1.0)
    for layer in structure.layers:
        for role in ("query", "key", "value", "attn_out"):
            w = masks[getattr(layer, role)]["weight"]
            grid = w.reshape(w.shape[0] // hd, hd, w.shape[1] // hd, hd).sum(dim=(1, 3))
            assert torch.all((grid == 0) | (grid == hd * hd))
        rows = masks[layer.ffn_in]["weight"]
        cols = masks[layer.ffn_out]["weight"]
        assert torch.equal(rows[:, 0], cols[0, :])  # one FFN channel = a row of one + a column of the other
        assert torch.all((rows.sum(1) == 0) | (rows.sum(1) == rows.shape[1]))


def test_masked_forward_equals_zeroed_weights():
    model = tiny_bert()
    reference = tiny_bert()
    _, masks = LevelPruner(model, cfg(sparsity=0.6)).compress()
    with torch.no_grad():
        for name, m in masks.items():
            reference.get_submodule(name).weight.mul_(m["weight"])
    batch = tiny_batch()
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, reference(**batch).logits, atol=1e-6, rtol=0)


def test_total_sparsity_is_global_and_capped():
    model = tiny_bert()
    # Make layer 0's FFN much smaller in magnitude so a global ranking prefers it.
    with torch.no_grad():
        model.bert.encoder.layer[0].intermediate.dense.weight.mul_(0.01)
    config = [{"op_names_re": [r".*intermediate\.dense"], "total_sparsity": 0.4, "max_sparsity_per_layer": 0.7}]
    pruner = Pruner(model, config, granularity="out_channel")
    masks = pruner.update_masks(1.0)
    s = [sparsity(masks[f"bert.encoder.layer.{i}.intermediate.dense"]["weight"]) for i in range(2)]
    assert (s[0] + s[1]) / 2 == pytest.approx(0.4, abs=1 / 128)  # whole rows of 32 weights
    assert s[0] == pytest.approx(0.6875)  # hits the 0.7 cap in whole rows (44 of 64)
    assert s[1] < s[0]


def test_taylor_and_l1_pick_different_channels_when_gradients_say_so():
    model = tiny_bert()
    name = "bert.encoder.layer.0.intermediate.dense"
    config = [{"op_names": [name], "sparsity": 0.5}]
    taylor = Pruner(model, config, importance="taylor", granularity="out_channel")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    taylor.attach(optimizer)
    batch = tiny_batch()
    # Gradients only through the channels with the smallest weights: Taylor must keep those.
    weight = model.get_submodule(name).weight.detach()
    small = torch.argsort(weight.abs().sum(1))[:32]
    for _ in range(2):
        optimizer.zero_grad()
        hidden = model.bert.embeddings(batch["input_ids"])
        out = model.get_submodule(name)(hidden)
        out[..., small].pow(2).sum().backward()
        optimizer.step()
    taylor_kept = (taylor.masks[name]["weight"].sum(1) > 0).nonzero().flatten()
    taylor.detach(bake=False)
    _, l1_masks = L1NormPruner(model, config).compress()
    l1_kept = (l1_masks[name]["weight"].sum(1) > 0).nonzero().flatten()
    assert set(taylor_kept.tolist()) == set(small.tolist())
    assert set(taylor_kept.tolist()).isdisjoint(l1_kept.tolist())


def test_attach_keeps_existing_optimizer_and_schedule_grows_sparsity(tmp_path):
    from trimformer.schedule import Iterative

    model = tiny_bert()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)  # made before the pruner
    pruner = Pruner(model, cfg(sparsity=0.5), importance="taylor", granularity="out_channel",
                    schedule=Iterative(rounds=3, steps_per_round=2, target=0.5)).attach(optimizer)
    batch = {**tiny_batch(), "labels": torch.tensor([0, 1, 0])}
    seen = []
    for _ in range(6):
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()
        seen.append(sparsity(pruner.masks["bert.encoder.layer.1.intermediate.dense"]["weight"]))
    assert seen[0] > 0 and seen == sorted(seen) and seen[-1] == pytest.approx(0.5, abs=1 / 64)
    name = "bert.encoder.layer.0.attention.self.query"
    before = model.get_submodule(name).parametrizations.weight.original.detach().clone()
    optimizer.zero_grad()
    model(**batch).loss.backward()
    optimizer.step()
    assert not torch.equal(before, model.get_submodule(name).parametrizations.weight.original)
    masks = pruner.masks
    save_masks(masks, tmp_path / "masks.safetensors")
    loaded = load_masks(tmp_path / "masks.safetensors")
    assert loaded.keys() == masks.keys()
    assert all(torch.equal(loaded[k]["weight"], masks[k]["weight"]) for k in masks)
    pruner.detach(bake=True)
    w = model.get_submodule("bert.encoder.layer.1.intermediate.dense").weight
    assert not hasattr(model.get_submodule(name), "parametrizations")
    assert sparsity((w != 0).float()) == pytest.approx(0.5, abs=1 / 64)


def test_head_units_remove_whole_heads_across_qkvo():
    model = tiny_bert()
    structure = model_structure(model)
    hd = structure.head_dim
    config = [{"op_types": ["Linear"], "op_partial_names": [".attention."], "sparsity": 0.5}]
    masks = Pruner(model, config, granularity="auto", head_units=True).update_masks(1.0)
    for layer in structure.layers:
        q_heads = masks[layer.query]["weight"][:, 0].reshape(-1, hd)[:, 0]
        assert int(q_heads.sum()) == 2  # 2 of 4 heads kept
        for n in (layer.key, layer.value):
            assert torch.equal(masks[n]["weight"][:, 0].reshape(-1, hd)[:, 0], q_heads)
        assert torch.equal(masks[layer.attn_out]["weight"][0, :].reshape(-1, hd)[:, 0], q_heads)


def test_coupled_ffn_keeps_the_configured_sparsity():
    model = tiny_bert()
    masks = Pruner(model, cfg(sparsity=0.5), granularity="auto").update_masks(1.0)
    for layer in model_structure(model).layers:
        assert sparsity(masks[layer.ffn_in]["weight"]) == pytest.approx(0.5)
        assert sparsity(masks[layer.ffn_out]["weight"]) == pytest.approx(0.5)


def test_global_head_keep_ranks_all_layers_together_and_keeps_one_per_layer():
    from trimformer.allocate import global_head_keep

    scores = [torch.tensor([5.0, 6.0, 7.0, 8.0]), torch.tensor([0.1, 0.2, 0.3, 0.4]),
              torch.tensor([1.0, 9.0, 2.0, 3.0])]
    keeps = global_head_keep(scores, 0.5)  # 6 of 12 heads go
    assert [k.tolist() for k in keeps] == [[1, 1, 1, 1], [0, 0, 0, 1], [0, 1, 0, 0]]  # layer 1 keeps its best
    assert sum(int(k.sum()) for k in keeps) == 6
    uniform = [int(k.sum()) for k in global_head_keep([s.clone() for s in scores], 0.0)]
    assert uniform == [4, 4, 4]


def test_per_layer_normalised_scores_share_the_cut_between_layers():
    from trimformer.allocate import global_head_keep, per_layer_normalised

    scores = [torch.tensor([100.0, 200.0, 300.0, 400.0]), torch.tensor([1.0, 2.0, 3.0, 4.0])]
    raw = [int(k.sum()) for k in global_head_keep([s.clone() for s in scores], 0.5)]
    assert raw == [3, 1]  # the small-scale layer loses all but its best head
    normalised = [int(k.sum()) for k in global_head_keep(per_layer_normalised(scores), 0.5)]
    assert normalised == [2, 2]


def test_global_head_allocation_in_the_pruner_keeps_the_total():
    from trimformer.pruners import Pruner

    model = tiny_bert(num_layers=3)
    st = model_structure(model)
    names = [n for layer in st.layers for n in layer.attention_linears]
    with torch.no_grad():  # make layer 2's heads clearly the most important by magnitude
        for n in st.layers[2].attention_linears:
            model.get_submodule(n).weight.mul_(10)
    pruner = Pruner(model, [{"op_names": names, "sparsity": 0.5}], importance="l1", granularity="auto",
                    head_units=True, head_allocation="global")
    masks = pruner.compute_masks(1.0)
    kept = [int(masks[layer.query]["weight"][:, 0].sum()) // st.head_dim for layer in st.layers]
    assert sum(kept) == 6 and kept[2] == 4 and min(kept) >= 1
    pruner = Pruner(model, [{"op_names": names, "sparsity": 0.5}], importance="l1", granularity="auto",
                    head_units=True, head_allocation="global_norm")  # scaled layer no longer wins by scale
    masks = pruner.compute_masks(1.0)
    kept = [int(masks[layer.query]["weight"][:, 0].sum()) // st.head_dim for layer in st.layers]
    assert sum(kept) == 6 and kept[2] < 4 and min(kept) >= 1


def test_channel_taylor_is_the_loss_change_of_removing_each_ffn_channel():
    from trimformer.scoring import ChannelTaylorImportance

    model = tiny_bert()
    name, out_name = "bert.encoder.layer.0.intermediate.dense", "bert.encoder.layer.0.output.dense"
    scorer = ChannelTaylorImportance.for_ffn(model, [name])
    assert list(scorer.outputs) == [name]
    activations = []
    model.get_submodule(out_name).register_forward_hook(lambda m, args, out: activations.append(args[0]) or
                                                        args[0].retain_grad())
    expected = torch.zeros(64)
    for seed in (0, 1):  # two steps: the per-step |sums| add up
        model.zero_grad()
        batch = tiny_batch(seed=seed)
        model(**batch, labels=torch.tensor([0, 1, 1])).loss.backward()
        scorer.accumulate()
        a = activations[-1]
        expected += (a * a.grad).sum((0, 1)).abs()  # |sum over tokens of a * dL/da| per channel
    assert scorer.steps == 2
    target = next(t for t in Pruner(model, [{"op_names": [name], "sparsity": 0.5}]).targets)
    per_row = scorer(target)
    assert per_row.shape == model.get_submodule(name).weight.shape
    torch.testing.assert_close(per_row.sum(1), expected, rtol=1e-4, atol=1e-7)
    # The pruner keeps the channels with the largest first-order loss change, whatever their weights.
    pruner = Pruner(model, [{"op_names": [name], "sparsity": 0.5}], importance=scorer, granularity="out_channel")
    kept = (pruner.compute_masks()[name]["weight"].sum(1) > 0).nonzero().flatten()
    assert set(kept.tolist()) == set(torch.argsort(expected, descending=True)[:32].tolist())


def test_aligned_counts_keep_the_total_on_multiples():
    from trimformer.allocate import aligned_counts

    # 1354 + 1005 + 565 + 268 + 204 + 64 = 3460: rounded down 1344, 992, 560, 256, 192, 64 (3408); the
    # layers that lost most (1005: 13, 268 and 204: 12) get 16 back until 3456, the multiple nearest 3460.
    counts, widths = [1354, 1005, 565, 268, 204, 64], [1536] * 6
    aligned = aligned_counts(counts, widths, 16)
    assert aligned == [1344, 1008, 560, 272, 208, 64] and sum(aligned) == 3456
    assert all(a % 16 == 0 for a in aligned)
    assert aligned_counts([3, 40], [32, 40], 16) == [16, 32]  # at least one multiple
    assert aligned_counts([37, 37], [37, 40], 16) == [32, 32]  # never past a layer's width
    assert aligned_counts([5, 7], [8, 8], 1) == [5, 7]


def test_the_aligned_global_cut_keeps_each_layers_best_channels_on_multiples():
    """The global ranking keeps 13 and 27 channels (layer 0's scores rise with the channel index to
    2016; layer 1's are 1600 for 37 channels and 4800 for 27); aligned to 8: 16 and 24, each layer's
    highest-scored channels."""
    from trimformer.ffn_stage import aligned_global_cut
    from trimformer.pruners import Pruner

    model = tiny_bert(ffn=64)
    names = [f"bert.encoder.layer.{i}.intermediate.dense" for i in range(2)]
    pruner = Pruner(model, [{"op_names": names, "total_sparsity": 1 - 40 / 128, "max_sparsity_per_layer": 0.9}],
                    importance="taylor", granularity="out_channel")
    layer0 = torch.arange(64, dtype=torch.float32)[:, None].expand(64, 32)  # a row's score sums its 32 weights
    layer1 = torch.cat([torch.zeros(37), torch.full((27,), 100.0)])[:, None].expand(64, 32) + 50
    pruner.taylor.sums = {names[0]: layer0.clone(), names[1]: layer1.clone()}
    masks = pruner.compute_masks(1.0)
    assert [int((masks[n]["weight"].sum(1) > 0).sum()) for n in names] == [13, 27]
    aligned = aligned_global_cut(model, pruner, masks, 8)
    rows = [aligned[n]["weight"].sum(1) > 0 for n in names]
    assert [int(r.sum()) for r in rows] == [16, 24]
    assert rows[0][48:].all() and not rows[0][:48].any()  # layer 0's 16 best: the highest indices
    assert rows[1][40:].all() and not rows[1][:40].any()
