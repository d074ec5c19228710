"""Parameter counts, FLOPs and latency of (possibly shrunk) transformer models.

Everything is read from the modules the model actually has, never from its config: after
shrinking, each layer can have its own head count and FFN width, and a layer with no heads
left has no q/k/v Linears at all (its attention output is a ``Linear(0, hidden)``).

All speedup figures in the project go through :func:`compare_latency`, which times the two
models in one process, on the same inputs and threads, with interleaved repeats.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.nn.utils import parametrize

from trimformer.structure import LayerStructure, ModelStructure, model_structure


@dataclass(frozen=True)
class FlopCount:
    """Forward-pass FLOPs (a multiply-add counts as 2) of the encoder layers and of the whole model."""

    encoder: int
    total: int


@dataclass(frozen=True)
class LatencyStats:
    """Wall-clock seconds per forward pass over ``n`` timed repeats."""

    median_s: float
    p10_s: float
    p90_s: float
    n: int


@dataclass(frozen=True)
class LatencyComparison:
    """Latency of a reference and a candidate timed together; speedup = reference / candidate median."""

    reference: LatencyStats
    candidate: LatencyStats
    speedup: float
    pass_speedups: tuple[float, ...] = ()  # every pass's speedup, in order (compare_latency fills it)


@dataclass(frozen=True)
class SizeReport:
    """Size and compute of a dense model and its pruned version at one input shape."""

    params_before: int
    params_after: int
    encoder_params_before: int
    encoder_params_after: int
    flops_before: FlopCount
    flops_after: FlopCount
    flops_ratio: float  # total FLOPs before / after


# ---------------------------------------------------------------------------- sizes


def _layer_modules(model: nn.Module, structure: ModelStructure) -> Iterator[tuple[LayerStructure, nn.Module]]:
    for layer in structure.layers:
        yield layer, model.get_submodule(layer.prefix.rstrip("."))


def _optional_module(model: nn.Module, name: str) -> nn.Module | None:
    # A layer whose heads were all removed has no q/k/v modules; that is not an error.
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def count_params(model: nn.Module, encoder_only: bool = False) -> int:
    """Number of parameters of the model, or only of its transformer layers when ``encoder_only``."""
    if not encoder_only:
        # Deduplicate by identity: tied embeddings/decoders must count once.
        return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    structure = model_structure(model)
    seen: dict[int, torch.Tensor] = {}
    for _, module in _layer_modules(model, structure):
        seen.update({id(p): p for p in module.parameters()})
    return sum(p.numel() for p in seen.values())


def linear_shape(module: nn.Linear) -> tuple[int, int]:
    """(in, out) of a Linear, from its weight; a masked (parametrized) Linear counts its full shape."""
    if parametrize.is_parametrized(module, "weight"):
        weight = module.parametrizations.weight.original  # skip recomputing the masked weight
    else:
        weight = module.weight
    return int(weight.shape[1]), int(weight.shape[0])


def flops(model: nn.Module, batch_size: int, seq_len: int) -> FlopCount:
    """FLOPs of one forward pass on ``batch_size`` sequences of ``seq_len`` tokens.

    Counted: every Linear in the layers (2*B*S*in*out), the two attention matmuls per layer
    (QK^T and AV, each 2*B*S*S*heads*head_dim), and for ``total`` the Linears outside the
    layers (pooler, pre-classifier, classifier), assumed to act on one vector per sequence (B rows),
    as in sequence classification. Ignored: embedding lookups, biases, layer norms, softmax,
    activations and masking, which are small next to the matmuls. Masked weights count as dense:
    only shrinking removes FLOPs.
    """
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"batch_size and seq_len must be >= 1, got {batch_size} and {seq_len}")
    structure = model_structure(model)
    tokens = batch_size * seq_len
    encoder = 0
    in_layers: set[int] = set()
    for layer, module in _layer_modules(model, structure):
        for sub in module.modules():
            in_layers.add(id(sub))
            if isinstance(sub, nn.Linear):
                n_in, n_out = linear_shape(sub)
                encoder += 2 * tokens * n_in * n_out
        # q/k/v width is heads * head_dim for this layer; a missing module means 0 heads.
        query = _optional_module(model, layer.query)
        value = _optional_module(model, layer.value)
        qk_width = linear_shape(query)[1] if isinstance(query, nn.Linear) else 0
        av_width = linear_shape(value)[1] if isinstance(value, nn.Linear) else 0
        encoder += 2 * batch_size * seq_len * seq_len * (qk_width + av_width)
    head = 0
    for sub in model.modules():
        if isinstance(sub, nn.Linear) and id(sub) not in in_layers:
            n_in, n_out = linear_shape(sub)
            head += 2 * batch_size * n_in * n_out
    return FlopCount(encoder=encoder, total=encoder + head)


def layer_widths(model: nn.Module) -> tuple[list[int], list[int]]:
    """(heads per layer, FFN width per layer), read from the module shapes."""
    structure = model_structure(model)
    heads, ffn = [], []
    for layer in structure.layers:
        query = _optional_module(model, layer.query)
        heads.append(linear_shape(query)[1] // structure.head_dim if isinstance(query, nn.Linear) else 0)
        ffn_in = _optional_module(model, layer.ffn_in)
        ffn.append(linear_shape(ffn_in)[1] if isinstance(ffn_in, nn.Linear) else 0)
    return heads, ffn


def size_report(dense: nn.Module, pruned: nn.Module, batch_size: int, seq_len: int) -> SizeReport:
    """Parameters and FLOPs of ``dense`` and ``pruned`` at one input shape."""
    before = flops(dense, batch_size, seq_len)
    after = flops(pruned, batch_size, seq_len)
    return SizeReport(
        params_before=count_params(dense),
        params_after=count_params(pruned),
        encoder_params_before=count_params(dense, encoder_only=True),
        encoder_params_after=count_params(pruned, encoder_only=True),
        flops_before=before,
        flops_after=after,
        flops_ratio=before.total / after.total if after.total else float("inf"),
    )


# ---------------------------------------------------------------------------- latency


def _random_inputs(models: tuple[nn.Module, ...], batch_size: int, seq_len: int,
                   device: torch.device) -> dict[str, torch.Tensor]:
    # Token ids valid for every model compared; a fixed seed so reruns time the same work.
    vocab = min(int(getattr(getattr(m, "config", None), "vocab_size", 100) or 100) for m in models)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch_size, seq_len), generator=generator)
    mask = torch.ones(batch_size, seq_len, dtype=torch.long)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def _percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 1]) of an already sorted list."""
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _stats(times: list[float]) -> LatencyStats:
    ordered = sorted(times)
    return LatencyStats(median_s=statistics.median(ordered), p10_s=_percentile(ordered, 0.1),
                        p90_s=_percentile(ordered, 0.9), n=len(ordered))


def _timed_call(model: nn.Module, inputs: dict[str, torch.Tensor], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # kernels are async; time only this call's work
    start = time.perf_counter()
    model(**inputs)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _runner(model: nn.Module, device: torch.device, compiled: bool) -> nn.Module:
    if not compiled:
        return model
    # On a GPU, "reduce-overhead" replays CUDA graphs: eager calls at these sizes are bound by kernel
    # launches (a pruned BERT timed no faster than the dense one), so graphs show what the cuts save.
    return torch.compile(model, mode="reduce-overhead" if device.type == "cuda" else None, dynamic=False)


def _check_args(batch_size: int, seq_len: int, warmup: int, repeats: int) -> None:
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"batch_size and seq_len must be >= 1, got {batch_size} and {seq_len}")
    if warmup < 0 or repeats < 1:
        raise ValueError(f"need warmup >= 0 and repeats >= 1, got {warmup} and {repeats}")


def time_models(models: tuple[nn.Module, ...], batch_size: int, seq_len: int, threads: int | None = None,
                warmup: int = 3, repeats: int = 10, device: str | torch.device = "cpu", bf16: bool = False,
                compile: bool = False) -> list[LatencyStats]:
    """Time models on shared inputs (valid tokens for all), repeats interleaved so that drift
    hits every model alike; restores threads and train flags. Ratios of medians are the speedups.
    `bf16` autocasts the forward; `compile` times each model under `torch.compile` (on CUDA with
    CUDA graphs), compiled afresh per call, the first calls of the warm-up (at least 3) compiling."""
    _check_args(batch_size, seq_len, warmup, repeats)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"latency on {dev} asked for, but torch sees no CUDA device")
    was_training = [m.training for m in models]
    old_threads = torch.get_num_threads()
    inputs = _random_inputs(models, batch_size, seq_len, dev)
    times: list[list[float]] = [[] for _ in models]
    limits = contextlib.nullcontext()
    if compile:
        warmup = max(warmup, 3)
        torch._dynamo.reset()  # fresh caches: no earlier shape counts against the recompile limit
        # Uneven layers compile a graph each; never fall back to eager silently (it would time eager).
        limits = torch._dynamo.config.patch(recompile_limit=64, fail_on_recompile_limit_hit=True)
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        for m in models:
            m.to(dev).eval()
        runners = [_runner(m, dev, compile) for m in models]
        # torch.compile traces under no_grad; inference_mode tensors are for eager only.
        with limits, (torch.no_grad() if compile else torch.inference_mode()), \
                torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            for m in runners:
                for _ in range(warmup):
                    m(**inputs)
            # Interleave so that drift (thermal, other load) hits every model alike.
            for _ in range(repeats):
                for i, m in enumerate(runners):
                    times[i].append(_timed_call(m, inputs, dev))
    finally:
        torch.set_num_threads(old_threads)
        for m, training in zip(models, was_training, strict=True):
            m.train(training)
    return [_stats(t) for t in times]


def measure_latency(model: nn.Module, batch_size: int = 32, seq_len: int = 128, threads: int | None = None,
                    warmup: int = 3, repeats: int = 10, device: str | torch.device = "cpu", bf16: bool = False,
                    compile: bool = False) -> LatencyStats:
    """Seconds per forward pass on random tokens with a full attention mask (eval, inference mode).

    The model is moved to ``device`` (in place). ``threads`` sets torch's intra-op threads for the
    measurement only. For speedups use :func:`compare_latency`, not two calls of this.
    """
    return time_models((model,), batch_size, seq_len, threads, warmup, repeats, device, bf16=bf16, compile=compile)[0]


def compare_latency(reference: nn.Module, candidate: nn.Module, batch_size: int = 32, seq_len: int = 128,
                    threads: int | None = None, warmup: int = 3, repeats: int = 10,
                    device: str | torch.device = "cpu", bf16: bool = False, compile: bool = False,
                    passes: int = 1) -> LatencyComparison:
    """Time two models on the same inputs and threads, repeats interleaved; speedup = ref / cand median.

    ``passes`` > 1 times the pair that many times over (each with its warm-up) and returns the pass
    whose speedup is the median (the lower middle one for an even count): on a shared machine one
    pass can stray by 15% while the repeats inside it agree, so a single pass is a poor figure to report.
    """
    if passes < 1:
        raise ValueError(f"need passes >= 1, got {passes}")
    results = []
    for _ in range(passes):
        ref, cand = time_models((reference, candidate), batch_size, seq_len, threads, warmup, repeats, device,
                                bf16=bf16, compile=compile)
        results.append(LatencyComparison(reference=ref, candidate=cand, speedup=ref.median_s / cand.median_s))
    chosen = sorted(results, key=lambda r: r.speedup)[(passes - 1) // 2]
    return replace(chosen, pass_speedups=tuple(r.speedup for r in results))
