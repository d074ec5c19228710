"""The run's training rows: some set aside to choose checkpoints on, and a record of which.

Stages that keep their best weights (`eval_every`, or several epochs) evaluate often and keep the
best; chosen on the dev set, the kept metric is the best of several noisy draws of the number the
report then states, which flatters it. With `select_rows: N` the choice is made on N training
rows no stage trains on, and dev is only ever measured. Files with rows beyond
`max_train_samples` (SST-2 in the default recipe reads 6,000 of 67,349) give the holdout from
rows that would not have been trained on anyway; smaller ones give it out of their training rows.

`data.json` in the run folder records the rows a run began with, so a resume on other rows (a
changed `max_train_samples` or `select_rows`) stops before training instead of mixing them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

import torch

from trimformer.atomic import write_atomic
from trimformer.glue import Example, GlueDataError

Row = TypeVar("Row")
# The draw does not follow the run's seed: runs that differ only in their seed train and choose on
# the same rows, so a seed sweep measures training noise alone, and `--seed` may change on resume.
HOLDOUT_SEED = 0


def rows_to_read(max_train_samples: int | None, select_rows: int) -> int | None:
    """How many rows of the train file to read: the training rows and the holdout together."""
    return None if max_train_samples is None else max_train_samples + select_rows


def split_holdout(rows: list[Row], select_rows: int, max_train_samples: int | None = None
                  ) -> tuple[list[Row], list[Row]]:
    """(training rows, holdout rows): `select_rows` rows drawn at random (GLUE files are not
    shuffled: CoLA's are grouped by source), the rest in file order, at most `max_train_samples`.
    GlueDataError when the holdout would leave nothing to train on."""
    if select_rows <= 0:
        return rows[:max_train_samples], []
    if select_rows >= len(rows):
        raise GlueDataError(f"select_rows={select_rows} holds out every training row: the train file "
                            f"has {len(rows)}; choose fewer, or select_rows=0 to choose on the dev set")
    generator = torch.Generator().manual_seed(HOLDOUT_SEED)
    held = set(torch.randperm(len(rows), generator=generator)[:select_rows].tolist())
    train = [row for i, row in enumerate(rows) if i not in held]
    return train[:max_train_samples], [rows[i] for i in sorted(held)]


def rows_digest(rows: list[Example]) -> str:
    """A fingerprint of labelled rows in their order: sha256 over their texts and labels."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps([row.text_a, row.text_b, row.label]).encode() + b"\n")
    return digest.hexdigest()


@dataclass(frozen=True)
class RowsRecord:
    """Which rows a run trains on and which it chooses on (`data.json`)."""

    train_rows: int
    train_digest: str
    holdout_rows: int
    holdout_digest: str

    @classmethod
    def of(cls, train: list[Example], holdout: list[Example]) -> RowsRecord:
        return cls(len(train), rows_digest(train), len(holdout), rows_digest(holdout))


def check_rows_record(path: Path, record: RowsRecord, write: bool = True) -> None:
    """Record the run's rows at `path`; resuming, GlueDataError if they are not the rows it began with."""
    if path.is_file():
        began = RowsRecord(**json.loads(path.read_text()))
        if began != record:
            raise GlueDataError(
                f"{path.parent} began on other rows ({began.train_rows} trained on, {began.holdout_rows} set aside) "
                f"than these ({record.train_rows} and {record.holdout_rows}, or the same counts of other rows): "
                "was max_train_samples, select_rows or the train file changed? Resume with what the run began "
                "with, or start a new --output-dir")
    elif write:
        write_atomic(path, json.dumps(asdict(record), indent=2))
