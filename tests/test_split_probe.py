"""bench/split_probe.py: its zeroing is exact and undone, and its Taylor scores are the first-order
estimate of what zeroing does to the loss."""

from __future__ import annotations

import torch

from tests.bench_scripts import load_bench
from tests.models import tiny_batch, tiny_bert
from trimformer.glue import get_task
from trimformer.structure import model_structure
from trimformer.train import task_loss

probe = load_bench("split_probe")


def labelled_batch():
    batch = tiny_batch(batch=4, seq=12, seed=3)
    batch["labels"] = torch.tensor([0, 1, 1, 0])
    return batch


def test_zeroed_keeps_what_it_keeps_and_restores_every_weight():
    model = tiny_bert(num_layers=2)
    st = model_structure(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dense = model(**tiny_batch(batch=4, seq=12, seed=3)).logits
    keep_all = ([torch.ones(st.num_heads) for _ in st.layers], [torch.ones(st.intermediate_size) for _ in st.layers])
    with probe.zeroed(model, st, *keep_all):
        assert torch.equal(model(**tiny_batch(batch=4, seq=12, seed=3)).logits, dense)
    keep_heads = [torch.tensor([1.0, 0.0, 1.0, 0.0]), torch.ones(st.num_heads)]
    keep_channels = [torch.ones(st.intermediate_size), torch.zeros(st.intermediate_size)]
    with probe.zeroed(model, st, keep_heads, keep_channels):
        attn_out = dict(model.named_modules())[st.layers[0].attn_out].weight
        assert attn_out[:, st.head_dim:2 * st.head_dim].abs().sum() == 0  # head 1 of layer 0 is gone
        assert attn_out[:, :st.head_dim].abs().sum() > 0
        assert not torch.allclose(model(**tiny_batch(batch=4, seq=12, seed=3)).logits, dense)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_taylor_head_scores_estimate_the_loss_change_of_zeroing_a_head():
    model = tiny_bert(num_layers=2)
    st = model_structure(model)
    spec = get_task("sst2")
    batch = labelled_batch()
    heads, channels = probe.taylor_scores(model, st, spec, [batch])
    assert [h.shape for h in heads] == [(st.num_heads,)] * 2
    assert [c.shape for c in channels] == [(st.intermediate_size,)] * 2
    model_inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        base = task_loss(spec, model(**model_inputs).logits, batch["labels"]).item()
    for layer in range(len(st.layers)):
        changes = []
        for head in range(st.num_heads):
            keep = [torch.ones(st.num_heads) for _ in st.layers]
            keep[layer][head] = 0.0
            with probe.zeroed(model, st, keep, [torch.ones(st.intermediate_size)] * 2), torch.no_grad():
                changes.append(abs(task_loss(spec, model(**model_inputs).logits, batch["labels"]).item() - base))
        # A random tiny model is near-linear in one head's output: the estimate is the change to ~1%.
        assert torch.allclose(heads[layer], torch.tensor(changes), rtol=0.1, atol=1e-7)
