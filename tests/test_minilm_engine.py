"""The packaged MiniLM loads and prunes offline (a few steps only)."""

from __future__ import annotations

import pytest
import torch

from tests.models import minilm_path
from trimformer import Pruner, TaylorFOWeightPruner, TorchEvaluator
from trimformer.structure import model_structure


@pytest.fixture(scope="module")
def minilm():
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)


def test_minilm_structure(minilm):
    s = model_structure(minilm)
    assert (len(s.layers), s.num_heads, s.head_dim, s.intermediate_size) == (6, 12, 32, 1536)


def test_minilm_taylor_ffn_and_auto_attention(minilm):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_path())
    batch = tok(["a gripping, funny film", "dull and far too long"], return_tensors="pt", padding=True)
    batch["labels"] = torch.tensor([1, 0])
    optimizer = torch.optim.AdamW(minilm.parameters(), lr=1e-5)

    def training(model, optimizer, criterion, lr_scheduler, max_steps, max_epochs):
        model.train()
        for _ in range(max_steps):
            loss = criterion(model(**batch).loss, None)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    evaluator = TorchEvaluator(training, optimizer, lambda loss, _: loss)
    ffn = [{"op_names": [f"bert.encoder.layer.{i}.intermediate.dense" for i in range(6)], "sparsity": 0.5}]
    _, masks = TaylorFOWeightPruner(minilm, ffn, evaluator, training_steps=2).compress()
    for m in masks.values():
        assert int((m["weight"].sum(1) == 0).sum()) == 768
    attention = [{"op_types": ["Linear"], "op_partial_names": [".attention."], "sparsity": 0.5}]
    pruner = Pruner(minilm, attention, importance="l1", granularity="auto")
    masks = pruner.update_masks(1.0)
    assert len(masks) == 24
    for m in masks.values():
        assert float(m["weight"].mean()) == pytest.approx(0.5)
