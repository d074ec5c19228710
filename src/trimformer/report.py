"""The result of a run: a JSON record, a Markdown table and an accuracy-vs-speedup plot.

``report.json`` is the source of truth (``load_report`` reads it back); ``report.md`` and
``report.png`` are views of it. All three are written atomically, so a reader never sees half
a file.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from torch import nn

from trimformer.atomic import replaced
from trimformer.bench import linear_shape
from trimformer.structure import model_structure


@dataclass
class StagePoint:
    """The main metric, measured speedup and total sparsity after one pipeline stage."""

    stage: str
    metric: float
    speedup: float
    sparsity: float
    seconds: float


@dataclass
class RunReport:
    """Everything a run proves about the model it wrote."""

    task: str
    model: str
    main_metric: str
    dense_metrics: dict[str, float]
    pruned_metrics: dict[str, float]
    total_sparsity: float
    heads_per_layer: list[int]
    ffn_per_layer: list[int]
    params_before: int
    params_after: int
    flops_ratio: float
    latency_dense_s: float
    latency_pruned_s: float
    speedup: float
    stage_seconds: dict[str, float]
    model_dir: str
    points: list[StagePoint]
    extra: dict[str, float | str | int | list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict whose keys are exactly the field names."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunReport:
        """Rebuild a report from ``to_dict`` output; ValueError on missing, unknown or ill-typed fields."""
        if not isinstance(data, dict):
            raise ValueError(f"a run report must be a JSON object, got {type(data).__name__}")
        names = {f.name for f in fields(cls)}
        missing = sorted(names - set(data) - {"extra"})
        unknown = sorted(set(data) - names)
        if missing or unknown:
            raise ValueError(f"invalid run report: missing fields {missing}, unknown fields {unknown}")
        try:
            return cls(
                task=str(data["task"]),
                model=str(data["model"]),
                main_metric=str(data["main_metric"]),
                dense_metrics=_float_dict(data["dense_metrics"]),
                pruned_metrics=_float_dict(data["pruned_metrics"]),
                total_sparsity=float(data["total_sparsity"]),
                heads_per_layer=[int(h) for h in data["heads_per_layer"]],
                ffn_per_layer=[int(w) for w in data["ffn_per_layer"]],
                params_before=int(data["params_before"]),
                params_after=int(data["params_after"]),
                flops_ratio=float(data["flops_ratio"]),
                latency_dense_s=float(data["latency_dense_s"]),
                latency_pruned_s=float(data["latency_pruned_s"]),
                speedup=float(data["speedup"]),
                stage_seconds=_float_dict(data["stage_seconds"]),
                model_dir=str(data["model_dir"]),
                points=[_stage_point(p) for p in data["points"]],
                extra=dict(data.get("extra") or {}),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ValueError(f"invalid run report: {err}") from err


def _stage_point(value: Any) -> StagePoint:
    return StagePoint(stage=str(value["stage"]), metric=float(value["metric"]),
                      speedup=float(value["speedup"]), sparsity=float(value["sparsity"]),
                      seconds=float(value["seconds"]))


def _float_dict(value: Any) -> dict[str, float]:
    if not isinstance(value, dict):
        raise TypeError(f"expected an object of numbers, got {type(value).__name__}")
    return {str(k): float(v) for k, v in value.items()}


# ---------------------------------------------------------------------------- sparsity


def _encoder_linear_weights(model: nn.Module) -> int:
    """Number of weight entries of the Linears inside the transformer layers (by shape, not by zeros)."""
    structure = model_structure(model)
    total = 0
    for layer in structure.layers:
        for sub in model.get_submodule(layer.prefix.rstrip(".")).modules():
            if isinstance(sub, nn.Linear):
                n_in, n_out = linear_shape(sub)
                total += n_in * n_out
    return total


def total_sparsity(dense_model: nn.Module, pruned_model: nn.Module) -> float:
    """1 - (encoder Linear weights in pruned) / (encoder Linear weights in dense), as NNI's tutorial does.

    Counts the shapes of the modules present, so removed heads, channels, whole attention blocks
    and dropped layers all count; masked-but-not-shrunk weights do not (shrink first).
    """
    dense = _encoder_linear_weights(dense_model)
    if dense == 0:
        raise ValueError("the dense model has no Linear weights in its transformer layers")
    return 1.0 - _encoder_linear_weights(pruned_model) / dense


# ---------------------------------------------------------------------------- writing


def _atomic_write(path: Path, write: Any, binary: bool = False) -> None:
    """Call ``write(file)`` on a temp file next to ``path``, then rename it over ``path``."""
    with replaced(path) as tmp, open(tmp, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def _fmt(value: float, digits: int = 4) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def render_markdown(report: RunReport) -> str:
    """The stage table (stage | metric | speedup | sparsity) followed by a dense-vs-pruned summary."""
    name = report.main_metric
    lines = [f"# {report.task}: {report.model}", "", f"## Stages ({name})", "",
             "| stage | metric | speedup | sparsity |", "| --- | --- | --- | --- |"]
    for p in report.points:
        lines.append(f"| {p.stage} | {_fmt(p.metric)} | {_fmt(p.speedup, 2)}x | {p.sparsity:.2%} |")
    lines += ["", "## Summary", "", "| | dense | pruned |", "| --- | --- | --- |"]
    lines.append(f"| {name} | {_fmt(report.dense_metrics.get(name, math.nan))} | "
                 f"{_fmt(report.pruned_metrics.get(name, math.nan))} |")
    for key in sorted((set(report.dense_metrics) | set(report.pruned_metrics)) - {name}):
        lines.append(f"| {key} | {_fmt(report.dense_metrics.get(key, math.nan))} | "
                     f"{_fmt(report.pruned_metrics.get(key, math.nan))} |")
    lines += [
        f"| params | {report.params_before:,} | {report.params_after:,} |",
        f"| latency (ms) | {report.latency_dense_s * 1e3:.2f} | {report.latency_pruned_s * 1e3:.2f} |",
        "", "| | value |", "| --- | --- |",
        f"| total sparsity | {report.total_sparsity:.2%} |",
        f"| FLOPs ratio (dense / pruned) | {_fmt(report.flops_ratio, 2)}x |",
        f"| speedup (measured) | {_fmt(report.speedup, 2)}x |",
        f"| heads per layer | {', '.join(map(str, report.heads_per_layer))} |",
        f"| FFN width per layer | {', '.join(map(str, report.ffn_per_layer))} |",
        f"| model | `{report.model_dir}` |",
    ]
    lines += [f"| {key} | {value} |" for key, value in report.extra.items()]
    if report.stage_seconds:
        lines += ["", "| stage | seconds |", "| --- | --- |"]
        lines += [f"| {stage} | {secs:.1f} |" for stage, secs in report.stage_seconds.items()]
    return "\n".join(lines) + "\n"


def _write_plot(report: RunReport, path: Path) -> None:
    # Figure + Agg canvas directly: no pyplot global state and no dependence on the default backend.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if report.points:
        xs = [p.speedup for p in report.points]
        ys = [p.metric for p in report.points]
        ax.plot(xs, ys, "o-", color="tab:blue", label="stages")
        for p in report.points:
            ax.annotate(p.stage, (p.speedup, p.metric), textcoords="offset points", xytext=(5, 5), fontsize=8)
    dense = report.dense_metrics.get(report.main_metric)
    if dense is not None:
        ax.plot([1.0], [dense], marker="*", markersize=14, color="tab:red", linestyle="none", label="dense")
    ax.set_xlabel("measured speedup (x)")
    ax.set_ylabel(report.main_metric)
    model_name = "/".join(Path(report.model).parts[-2:])  # a local path can be long; its tail names it
    ax.set_title(f"{report.task}: {model_name}", fontsize=10)
    ax.margins(x=0.12, y=0.12)  # room for the stage labels at the edges
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    _atomic_write(path, lambda f: fig.savefig(f, format="png"), binary=True)


def write_report(report: RunReport, folder: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` and ``report.png`` into ``folder``; returns their paths."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "md": out / "report.md", "png": out / "report.png"}
    text = json.dumps(report.to_dict(), indent=2)
    _atomic_write(paths["json"], lambda f: f.write(text + "\n"))
    markdown = render_markdown(report)
    _atomic_write(paths["md"], lambda f: f.write(markdown))
    _write_plot(report, paths["png"])
    return paths


def load_report(folder: str | os.PathLike[str]) -> RunReport:
    """Read ``report.json`` from ``folder`` (or the file's own path); ValueError if missing or invalid."""
    path = Path(folder)
    if path.is_dir():
        path = path / "report.json"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise ValueError(f"no run report at {path}") from err
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    try:
        return RunReport.from_dict(data)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
