"""The nine GLUE tasks: task specs, loading (local GLUE folder or the hub), tokenisation and collation.

The local layout is the one the original GLUE download script writes: ``<glue_dir>/<Folder>/train.tsv``
and ``dev.tsv`` (MNLI: ``dev_matched.tsv`` and ``dev_mismatched.tsv``). Metrics live in
`trimformer.glue_metrics` and are re-exported here.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from trimformer.glue_metrics import combine_splits, compute_metrics

__all__ = [
    "HUB_DATASET", "TASKS", "Example", "GlueCollator", "GlueDataError", "GlueDataset", "TaskSpec",
    "check_task_files", "combine_splits", "compute_metrics", "encode", "get_task", "load_split",
    "load_split_from_hub", "make_collator", "resolve_glue_dir", "split_path",
]

HUB_DATASET = "nyu-mll/glue"  # the hub's current home of the "glue" dataset (the old name redirects here)


class GlueDataError(ValueError):
    """Bad or missing GLUE data; the message names the task or file (and line) and the problem."""


@dataclass(frozen=True)
class TaskSpec:
    """One GLUE task: where its files are, which columns hold the texts and label, how it is scored."""

    name: str  # canonical lowercase name, also the hub config name
    folder: str  # folder under the GLUE dir
    text_keys: tuple[str, ...]  # TSV columns of the one or two texts
    label_key: str  # TSV column of the label
    # Label strings as written in the TSV; the index is the class id, ordered to equal the hub's ids.
    labels: tuple[str, ...] | None  # None = regression
    main_metric: str
    hub_text_keys: tuple[str, ...]
    dev_splits: tuple[str, ...] = ("dev",)
    columns: tuple[str, ...] | None = None  # column names of a headerless file (CoLA)

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    @property
    def is_pair(self) -> bool:
        return len(self.text_keys) == 2

    @property
    def splits(self) -> tuple[str, ...]:
        """Every split with labels: train and the dev split(s)."""
        return ("train", *self.dev_splits)


_BIN = ("0", "1")
_NLI2 = ("entailment", "not_entailment")
_PAIR = ("sentence1", "sentence2")
_QQP = ("question1", "question2")
TASKS: dict[str, TaskSpec] = {t.name: t for t in (
    TaskSpec("cola", "CoLA", ("sentence",), "label", _BIN, "matthews_correlation", ("sentence",),
             columns=("source", "label", "original_label", "sentence")),
    TaskSpec("sst2", "SST-2", ("sentence",), "label", _BIN, "accuracy", ("sentence",)),
    TaskSpec("mrpc", "MRPC", ("#1 String", "#2 String"), "Quality", _BIN, "f1", _PAIR),
    TaskSpec("stsb", "STS-B", _PAIR, "score", None, "pearson", _PAIR),
    TaskSpec("qqp", "QQP", _QQP, "is_duplicate", _BIN, "f1", _QQP),
    TaskSpec("mnli", "MNLI", _PAIR, "gold_label", ("entailment", "neutral", "contradiction"), "default",
             ("premise", "hypothesis"), dev_splits=("dev_matched", "dev_mismatched")),
    TaskSpec("qnli", "QNLI", ("question", "sentence"), "label", _NLI2, "accuracy", ("question", "sentence")),
    TaskSpec("rte", "RTE", _PAIR, "label", _NLI2, "accuracy", _PAIR),
    TaskSpec("wnli", "WNLI", _PAIR, "label", _BIN, "accuracy", _PAIR),
)}


def get_task(name: str | TaskSpec) -> TaskSpec:
    """The task for a name in any spelling ("sst2", "SST-2", "sts-b", "MNLI"); a TaskSpec passes through."""
    if isinstance(name, TaskSpec):
        return name
    key = name.strip().lower().replace("-", "").replace("_", "")
    if key not in TASKS:
        raise GlueDataError(f"unknown GLUE task {name!r}; valid tasks: {', '.join(TASKS)}")
    return TASKS[key]


def resolve_glue_dir(glue_dir: str | os.PathLike | None = None) -> Path:
    """The GLUE folder: `glue_dir`, else $GLUE_DIR, else ../shared/glue (relative to the working dir)."""
    raw = glue_dir if glue_dir is not None else os.environ.get("GLUE_DIR") or "../shared/glue"
    path = Path(raw).expanduser()
    if not path.is_dir():
        raise GlueDataError(f"GLUE folder {path} (resolved: {path.resolve()}) does not exist; pass its path "
                            "(glue_dir / --glue-dir) or set the GLUE_DIR environment variable")
    return path


def _check_split(spec: TaskSpec, split: str) -> None:
    if split not in spec.splits:
        raise GlueDataError(f"task {spec.name} has no labelled split {split!r}; choose one of "
                            f"{', '.join(spec.splits)} (test labels are not public)")


def split_path(task: str | TaskSpec, split: str, glue_dir: str | os.PathLike | None = None) -> Path:
    """Path of a split's TSV file, e.g. <glue_dir>/SST-2/dev.tsv (the file need not exist)."""
    spec = get_task(task)
    _check_split(spec, split)
    return resolve_glue_dir(glue_dir) / spec.folder / f"{split}.tsv"


def check_task_files(task: str | TaskSpec, glue_dir: str | os.PathLike | None = None) -> None:
    """Fail early, before any training, if the train or a dev file of `task` is missing."""
    spec = get_task(task)
    missing = [str(p) for p in (split_path(spec, s, glue_dir) for s in spec.splits) if not p.is_file()]
    if missing:
        raise GlueDataError(f"task {spec.name}: missing GLUE file(s): {', '.join(missing)}")


@dataclass(frozen=True, slots=True)
class Example:
    """One labelled example; `text_b` is None for single-sentence tasks."""

    text_a: str
    text_b: str | None
    label: int | float  # class id, or the STS-B score


def _parse_label(spec: TaskSpec, raw: str, where: str) -> int | float:
    value = raw.strip()
    if spec.labels is not None:
        if value not in spec.labels:
            raise GlueDataError(f"{where}: label {value!r} is not one of {list(spec.labels)} "
                                f"(task {spec.name})")
        return spec.labels.index(value)
    try:
        score = float(value)
    except ValueError:
        score = math.nan
    if not math.isfinite(score):
        raise GlueDataError(f"{where}: score {value!r} is not a finite number (task {spec.name})")
    return score


def load_split(task: str | TaskSpec, split: str, glue_dir: str | os.PathLike | None = None,
               max_samples: int | None = None) -> list[Example]:
    """Examples of "train" or a dev split, read from the local GLUE folder (first `max_samples` rows)."""
    spec = get_task(task)
    path = split_path(spec, split, glue_dir)
    if not path.is_file():
        raise GlueDataError(f"task {spec.name}: {split} file {path} not found")
    if max_samples is not None and max_samples < 0:
        raise ValueError(f"max_samples must be >= 0 or None, got {max_samples}")
    examples: list[Example] = []
    # utf-8-sig drops MRPC's byte-order mark; QUOTE_NONE because sentences hold unbalanced quotes.
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = list(spec.columns) if spec.columns else next(reader, None)
        if header is None:
            raise GlueDataError(f"{path}: file is empty, expected a header line (task {spec.name})")
        wanted = (*spec.text_keys, spec.label_key)
        absent = [key for key in wanted if key not in header]
        if absent:
            raise GlueDataError(f"{path}: header lacks column(s) {absent} needed by task {spec.name}; "
                                f"found {header}")
        text_idx = [header.index(key) for key in spec.text_keys]
        label_idx = header.index(spec.label_key)
        for row in reader:
            if max_samples is not None and len(examples) >= max_samples:
                break
            if not row:
                continue  # a blank line (e.g. a trailing newline pair) is not a row
            where = f"{path}:{reader.line_num}"
            if len(row) != len(header):
                raise GlueDataError(f"{where}: expected {len(header)} tab-separated fields, got {len(row)}")
            texts = [row[i] for i in text_idx]
            examples.append(Example(texts[0], texts[1] if spec.is_pair else None,
                                    _parse_label(spec, row[label_idx], where)))
    return examples


def load_split_from_hub(task: str | TaskSpec, split: str, max_samples: int | None = None) -> list[Example]:
    """The same examples as `load_split`, from the hub's GLUE dataset (needs `datasets`, network or cache)."""
    spec = get_task(task)
    _check_split(spec, split)
    try:
        import datasets  # optional dependency: only hub users need it
    except ImportError:
        raise ImportError("loading GLUE from the hub needs the 'datasets' package: "
                          "pip install 'trimformer[hub]', or use a local GLUE folder (GLUE_DIR)") from None
    hub_split = split.replace("dev", "validation")  # dev -> validation, dev_matched -> validation_matched
    if max_samples is not None:
        hub_split += f"[:{max_samples}]"
    try:
        rows = datasets.load_dataset(HUB_DATASET, spec.name, split=hub_split)
    except Exception as err:  # offline, no cache, network: the user's fix is the same, so one message
        raise GlueDataError(f"could not load GLUE task {spec.name} split {split} from the hub "
                            f"({HUB_DATASET}): {err}; use a local GLUE folder (GLUE_DIR) instead") from err
    cast = float if spec.is_regression else int  # the hub's class ids equal our label indices
    keys = spec.hub_text_keys
    return [Example(r[keys[0]], r[keys[1]] if spec.is_pair else None, cast(r["label"])) for r in rows]


Feature = dict[str, list[int] | int | float]


def encode(tokenizer: Any, task: str | TaskSpec, examples: Sequence[Example],
           max_length: int = 128) -> list[Feature]:
    """Tokenise examples (truncated to `max_length`, unpadded) into model-input dicts with `labels`."""
    spec = get_task(task)
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    if not examples:
        return []
    texts_b = None
    if spec.is_pair:
        texts_b = [e.text_b for e in examples]
        if any(t is None for t in texts_b):
            raise GlueDataError(f"task {spec.name} takes sentence pairs, but an example has no text_b")
    enc = tokenizer([e.text_a for e in examples], texts_b, truncation=True, max_length=max_length)
    cast = float if spec.is_regression else int
    keys = list(enc.keys())
    return [{**{k: enc[k][i] for k in keys}, "labels": cast(e.label)} for i, e in enumerate(examples)]


def _stack(values: list[Any]) -> torch.Tensor:
    if isinstance(values[0], torch.Tensor):
        return torch.stack(values)
    return torch.tensor(values)  # python floats -> float32, ints -> int64


@dataclass
class GlueCollator:
    """Pads the tokenizer's inputs to the batch's longest; stacks every other key (labels, teacher_logits)."""

    tokenizer: Any
    pad_to_multiple_of: int | None = None

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        token_keys = [k for k in features[0] if k in self.tokenizer.model_input_names]
        batch = dict(self.tokenizer.pad([{k: f[k] for k in token_keys} for f in features], padding=True,
                                        pad_to_multiple_of=self.pad_to_multiple_of, return_tensors="pt"))
        for key in features[0]:
            if key not in token_keys:
                batch[key] = _stack([f[key] for f in features])
        return batch


def make_collator(tokenizer: Any, pad_to_multiple_of: int | None = None) -> GlueCollator:
    """A DataLoader `collate_fn` that pads dynamically (see `GlueCollator`)."""
    return GlueCollator(tokenizer, pad_to_multiple_of)


class GlueDataset(Dataset):
    """Encoded features, optionally with one row of cached teacher logits per example."""

    def __init__(self, features: Sequence[Feature], teacher_logits: torch.Tensor | None = None):
        if teacher_logits is not None and (teacher_logits.ndim != 2 or len(teacher_logits) != len(features)):
            raise ValueError(f"teacher_logits must be [{len(features)}, num_labels], "
                             f"got {tuple(teacher_logits.shape)}")
        self.features = list(features)
        self.teacher_logits = teacher_logits

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.features[index])
        if self.teacher_logits is not None:
            item["teacher_logits"] = self.teacher_logits[index]
        return item

    def with_teacher_logits(self, teacher_logits: torch.Tensor) -> GlueDataset:
        """A new dataset over the same features with `teacher_logits` ([N, num_labels]) attached."""
        return GlueDataset(self.features, teacher_logits)
