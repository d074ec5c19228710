"""bench: parameter counts, FLOPs and latency, on tiny random models (timings never asserted tightly)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from tests.models import tiny_bert, tiny_distilbert
from trimformer.bench import (
    FlopCount,
    compare_latency,
    count_params,
    flops,
    layer_widths,
    measure_latency,
    size_report,
)

B, S = 2, 8


def _bert_flops(layers: int, hidden: int, ffn: int, labels: int, b: int, s: int) -> FlopCount:
    """The formula written out.

    Per layer: q, k, v, o and FFN in/out on B*S tokens, plus QK^T and AV; pooler and classifier on B rows.
    """
    linears = 2 * b * s * (4 * hidden * hidden + 2 * hidden * ffn)
    attention = 2 * (2 * b * s * s * hidden)  # heads * head_dim == hidden
    encoder = layers * (linears + attention)
    head = 2 * b * hidden * hidden + 2 * b * hidden * labels
    return FlopCount(encoder=encoder, total=encoder + head)


class _NoHeads(nn.Module):
    """Stand-in for an attention block with every head removed: no Linears, outputs zeros."""

    def forward(self, hidden_states, *args, **kwargs):
        return (torch.zeros(*hidden_states.shape[:-1], 0), None)


def _drop_all_heads(model, layer: int) -> None:
    attention = model.bert.encoder.layer[layer].attention
    attention.self = _NoHeads()
    with warnings.catch_warnings():  # initialising a zero-element weight warns; that is expected here
        warnings.simplefilter("ignore", UserWarning)
        attention.output.dense = nn.Linear(0, model.config.hidden_size)


def _halve_ffn(model, layer: int) -> None:
    block = model.bert.encoder.layer[layer]
    hidden, width = model.config.hidden_size, model.config.intermediate_size
    block.intermediate.dense = nn.Linear(hidden, width // 2)
    block.output.dense = nn.Linear(width // 2, hidden)


def test_count_params_matches_numel():
    model = tiny_bert()
    assert count_params(model) == sum(p.numel() for p in model.parameters())
    encoder = sum(p.numel() for p in model.bert.encoder.layer.parameters())
    assert count_params(model, encoder_only=True) == encoder
    assert 0 < encoder < count_params(model)


def test_flops_of_tiny_bert_match_the_formula():
    model = tiny_bert(num_layers=2, hidden=32, ffn=64)
    assert flops(model, B, S) == _bert_flops(2, 32, 64, 2, B, S)
    assert flops(model, 4, 16) == _bert_flops(2, 32, 64, 2, 4, 16)


def test_flops_of_distilbert_count_pre_classifier():
    model = tiny_distilbert()
    per_layer = 2 * B * S * (4 * 32 * 32 + 2 * 32 * 64) + 4 * B * S * S * 32
    assert flops(model, B, S) == FlopCount(encoder=2 * per_layer,
                                           total=2 * per_layer + 2 * B * 32 * 32 + 2 * B * 32 * 2)


def test_shrinking_ffn_drops_flops_by_the_removed_channels():
    dense, pruned = tiny_bert(), tiny_bert()
    _halve_ffn(pruned, 0)
    removed = 2 * B * S * (2 * 32 * 32)  # 32 channels: a row of ffn_in and a column of ffn_out each
    assert flops(dense, B, S).encoder - flops(pruned, B, S).encoder == removed
    assert flops(dense, B, S).total - flops(pruned, B, S).total == removed
    assert layer_widths(pruned) == ([4, 4], [32, 64])
    report = size_report(dense, pruned, B, S)
    assert report.params_before - report.params_after == 2 * 32 * 32 + 32  # weights + ffn_in bias
    assert report.encoder_params_before - report.encoder_params_after == 2 * 32 * 32 + 32
    assert report.flops_ratio == pytest.approx(report.flops_before.total / report.flops_after.total)
    assert report.flops_ratio > 1


def test_layer_without_heads_is_counted():
    dense, pruned = tiny_bert(), tiny_bert()
    _drop_all_heads(pruned, 0)
    attention = 2 * B * S * (4 * 32 * 32) + 4 * B * S * S * 32  # q, k, v, o and both matmuls
    assert flops(dense, B, S).encoder - flops(pruned, B, S).encoder == attention
    assert layer_widths(pruned) == ([0, 4], [64, 64])
    encoder = sum(p.numel() for p in pruned.bert.encoder.layer.parameters())
    assert count_params(pruned, encoder_only=True) == encoder


def test_masked_linears_count_their_full_shape():
    class Mask(nn.Module):
        def forward(self, w):
            return w * (torch.arange(w.shape[0]) % 2).unsqueeze(1)

    model = tiny_bert()
    before = flops(model, B, S)
    parametrize.register_parametrization(model.bert.encoder.layer[0].intermediate.dense, "weight", Mask())
    assert flops(model, B, S) == before


def test_flops_rejects_empty_shapes():
    with pytest.raises(ValueError):
        flops(tiny_bert(), 0, 8)


def test_measure_latency_is_positive_and_restores_state():
    model = tiny_bert().train()
    threads = torch.get_num_threads()
    stats = measure_latency(model, batch_size=B, seq_len=S, threads=1, warmup=1, repeats=5)
    assert stats.n == 5
    assert 0 < stats.p10_s <= stats.median_s <= stats.p90_s
    assert torch.get_num_threads() == threads
    assert model.training  # put back in train mode afterwards


def test_measure_latency_works_on_a_shrunk_model():
    model = tiny_bert()
    _drop_all_heads(model, 0)
    _halve_ffn(model, 1)
    assert measure_latency(model, batch_size=B, seq_len=S, warmup=1, repeats=3).median_s > 0


def test_measure_latency_rejects_bad_arguments():
    with pytest.raises(ValueError):
        measure_latency(tiny_bert(), batch_size=B, seq_len=S, repeats=0)


def test_compare_latency_of_a_model_with_itself_is_about_one():
    model = tiny_bert()
    result = compare_latency(model, model, batch_size=B, seq_len=S, warmup=2, repeats=15)
    assert result.reference.n == result.candidate.n == 15
    assert result.speedup == pytest.approx(result.reference.median_s / result.candidate.median_s)
    assert 0.5 < result.speedup < 2.0


def test_compare_latency_in_passes_reports_the_median_pass(monkeypatch):
    import trimformer.bench as bench

    candidate_seconds = iter([0.5, 0.25, 1.0])  # speedups x2, x4, x1 against a reference of 1 s

    def fake_time_models(models, *args, **kwargs):
        stats = [bench.LatencyStats(median_s=s, p10_s=s, p90_s=s, n=3) for s in (1.0, next(candidate_seconds))]
        return stats[: len(models)]

    monkeypatch.setattr(bench, "time_models", fake_time_models)
    result = compare_latency(tiny_bert(), tiny_bert(), batch_size=B, seq_len=S, passes=3)
    assert result.pass_speedups == (2.0, 4.0, 1.0)
    assert result.speedup == 2.0 and result.candidate.median_s == 0.5  # the median pass, whole
    with pytest.raises(ValueError, match="passes"):
        compare_latency(tiny_bert(), tiny_bert(), batch_size=B, seq_len=S, passes=0)


def test_compare_latency_across_families():
    result = compare_latency(tiny_bert(), tiny_distilbert(), batch_size=B, seq_len=S, warmup=1, repeats=3)
    assert result.speedup > 0


def test_compiled_timing_compiles_each_model_and_restores_it(monkeypatch):
    """`compile=True` times `torch.compile`d models (here the eager backend: no C++ toolchain needed,
    the plumbing is the same) and leaves the caller's models as they were."""
    calls = []
    real = torch.compile

    def spy(model, **kwargs):
        calls.append((model, kwargs.get("mode")))
        return real(model, **{**kwargs, "backend": "eager"})

    monkeypatch.setattr(torch, "compile", spy)
    dense, cut = tiny_bert(), tiny_bert()
    _halve_ffn(cut, 0)
    cut.train()
    result = compare_latency(dense, cut, batch_size=B, seq_len=S, warmup=1, repeats=3, compile=True)
    assert [m for m, _ in calls] == [dense, cut] and all(mode is None for _, mode in calls)  # CPU: no CUDA graphs
    assert result.reference.n == result.candidate.n == 3 and result.speedup > 0
    assert cut.training and not dense.training and type(cut).__name__ == "BertForSequenceClassification"


def test_timing_on_a_missing_gpu_is_refused():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(ValueError, match="no CUDA device"):
        measure_latency(tiny_bert(), batch_size=B, seq_len=S, device="cuda")
