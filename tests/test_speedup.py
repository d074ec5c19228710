"""NNI-compatible ModelSpeedup on Linear -> activation -> Linear chains."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.models import tiny_batch, tiny_bert, tiny_distilbert
from tests.test_shrink import randomize
from trimformer.masks import apply_masks, remove_masks
from trimformer.speedup import ModelSpeedup


def ffn_masks(num_layers: int, ffn: int = 64, hidden: int = 32) -> dict:
    masks = {}
    for i in range(num_layers):
        mask = torch.ones(ffn, hidden)
        mask[i::3] = 0  # whole channels
        mask[1 + i, :4] = 0  # a partly masked channel stays
        masks[f"layer.{i}.intermediate.dense"] = {"weight": mask}
    return masks


def test_bert_encoder_like_the_nni_tutorial():
    model = randomize(tiny_bert(), 0)
    encoder = model.bert.encoder
    masks = ffn_masks(2)
    dummy = torch.randn(2, 7, 32, generator=torch.Generator().manual_seed(0))
    apply_masks(encoder, masks)
    with torch.no_grad():
        masked = encoder(dummy).last_hidden_state
        masked_logits = model(**tiny_batch()).logits
    remove_masks(encoder, bake=False)  # speedup gets the masks as an argument, as in NNI
    assert ModelSpeedup(encoder, dummy, masks).speedup_model() is encoder
    with torch.no_grad():
        torch.testing.assert_close(encoder(dummy).last_hidden_state, masked, atol=1e-5, rtol=0)
        torch.testing.assert_close(model(**tiny_batch()).logits, masked_logits, atol=1e-5, rtol=0)
    kept = [64 - len(range(i, 64, 3)) for i in range(2)]
    assert [layer.intermediate.dense.out_features for layer in encoder.layer] == kept
    assert [layer.output.dense.in_features for layer in encoder.layer] == kept
    assert model.config.trimformer_ffn_per_layer == kept  # the encoder shares the model's config


def test_distilbert_transformer_with_attached_masks():
    model = randomize(tiny_distilbert(), 1)
    transformer = model.distilbert.transformer
    masks = {k.replace("intermediate.dense", "ffn.lin1"): v for k, v in ffn_masks(2).items()}
    dummy = torch.randn(2, 5, 32)
    apply_masks(transformer, masks)
    with torch.no_grad():
        masked = transformer(dummy).last_hidden_state
    ModelSpeedup(transformer, dummy, None).speedup_model()
    assert transformer.layer[0].ffn.lin1.out_features == 64 - 22
    torch.testing.assert_close(transformer(dummy).last_hidden_state, masked, atol=1e-5, rtol=0)


def test_plain_sequential_chain():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Dropout(0.1), nn.Linear(16, 6), nn.ReLU(), nn.Linear(6, 3))
    for p in net.parameters():
        nn.init.normal_(p, 0, 0.5)
    first, second = torch.ones(16, 8), torch.ones(6, 16)
    first[:5] = 0
    second[2] = 0
    masks = {"0": {"weight": first}, "3": {"weight": second}}
    x = torch.randn(4, 8)
    apply_masks(net, masks)
    net.eval()
    with torch.no_grad():
        masked = net(x)
    ModelSpeedup(net, x, None).speedup_model()
    assert [net[0].out_features, net[3].in_features, net[3].out_features, net[5].in_features] == [11, 11, 5, 5]
    torch.testing.assert_close(net(x), masked, atol=1e-5, rtol=0)


def test_unsupported_graph_is_refused_and_left_unchanged():
    net = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 3))
    mask = torch.ones(16, 8)
    mask[:4] = 0
    with pytest.raises(ValueError, match="cannot propagate from '0'"):
        ModelSpeedup(net, torch.randn(2, 8), {"0": {"weight": mask}}).speedup_model()
    assert net[0].out_features == 16 and net[0].weight.abs().sum() > 0
    model = tiny_bert()
    rows = torch.ones(32, 32)
    rows[:8] = 0
    with pytest.raises(ValueError, match="cannot propagate from 'layer.0.attention.self.query'"):
        ModelSpeedup(model.bert.encoder, torch.randn(1, 3, 32),
                     {"layer.0.attention.self.query": {"weight": rows}}).speedup_model()
