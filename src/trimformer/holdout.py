"""The run's training rows: some set aside to choose checkpoints on, and a record of which.

Stages that keep their best weights (`eval_every`, or several epochs) evaluate often and keep the
best; chosen on the dev set, the kept metric is the best of several noisy draws of the number the
report then states, which flatters it. With `select_rows: N` the choice is made on N training
rows no stage trains on, and dev is only ever measured. A file with at least N rows beyond
`max_train_samples` (SST-2 in the default recipe trains on 6,000 of 67,349) gives them from there,
so the rows trained on are the ones `select_rows: 0` trains on; a smaller one gives them out of
its training rows, at most a tenth of the file (RTE's 2,490 rows would otherwise lose a fifth).

`data.json` in the run folder records the rows a run began with, so a resume on other rows (a
changed `max_train_samples` or `select_rows`) stops before training instead of mixing them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

import torch

from trimformer.atomic import write_atomic
from trimformer.glue import Example, GlueDataError

log = logging.getLogger("trimformer")
Row = TypeVar("Row")
MAX_SHARE = 10  # a holdout taken out of the training rows is at most 1 / MAX_SHARE of the file
# The draw does not follow the run's seed: runs that differ only in their seed train and choose on
# the same rows, so a seed sweep measures training noise alone, and `--seed` may change on resume.
HOLDOUT_SEED = 0


def rows_to_read(max_train_samples: int | None, select_rows: int) -> int | None:
    """How many rows of the train file to read: all of them when some are to be set aside (they
    are drawn from the rows beyond `max_train_samples` where the file has enough)."""
    return max_train_samples if select_rows <= 0 else None


def split_holdout(rows: list[Row], select_rows: int, max_train_samples: int | None = None
                  ) -> tuple[list[Row], list[Row]]:
    """(training rows, holdout rows). The holdout is a random draw (GLUE files are not shuffled:
    CoLA's are grouped by source) of `select_rows` rows beyond the first `max_train_samples`, who
    then train as without a holdout; where the file has fewer, of at most a tenth of all rows, the
    rest training in file order. GlueDataError when that leaves fewer than 2 rows to choose on."""
    train = rows[:max_train_samples]
    if select_rows <= 0:
        return train, []
    generator = torch.Generator().manual_seed(HOLDOUT_SEED)
    beyond = rows[len(train):]
    if len(beyond) >= select_rows:
        picked = torch.randperm(len(beyond), generator=generator)[:select_rows].tolist()
        return train, [beyond[i] for i in sorted(picked)]
    take = min(select_rows, len(rows) // MAX_SHARE)
    if take < 2:
        raise GlueDataError(f"select_rows={select_rows}: the train file's {len(rows)} rows leave fewer than 2 to "
                            f"set aside (at most a tenth of them); select_rows=0 chooses on the dev set")
    if take < select_rows:
        log.warning("select_rows=%d: %d set aside, a tenth of the train file's %d rows", select_rows, take, len(rows))
    held = set(torch.randperm(len(rows), generator=generator)[:take].tolist())
    rest = [row for i, row in enumerate(rows) if i not in held]
    return rest[:max_train_samples], [rows[i] for i in sorted(held)]


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


def check_rows_record(out: Path, record: RowsRecord, select_rows: int, max_train_samples: int | None,
                      write: bool = True) -> None:
    """Record the run's rows in `out/data.json`; resuming, GlueDataError if they are not the rows it
    began with. A run begun before data.json was written must resume with the `select_rows` (0
    then) and `max_train_samples` its `recipe.json` has, as its teacher logits are of those rows."""
    path = out / "data.json"
    if path.is_file():
        try:
            began = RowsRecord(**json.loads(path.read_text()))
        except (ValueError, TypeError) as err:
            raise GlueDataError(f"{path}: not a trimformer data record ({err}); restore it or start a new "
                                "--output-dir") from None
        if began != record:
            same_counts = (began.train_rows, began.holdout_rows) == (record.train_rows, record.holdout_rows)
            raise GlueDataError(
                f"{path}: the run began training on {began.train_rows} rows with {began.holdout_rows} set aside; "
                f"this resume has {record.train_rows} and {record.holdout_rows}"
                f"{' (the same counts, other rows)' if same_counts else ''}. Was max_train_samples, select_rows "
                "or the train file changed? Resume with what the run began with, or start a new --output-dir")
        return
    if (out / "recipe.json").is_file() and (out / "teacher_logits.safetensors").is_file():
        began_with = json.loads((out / "recipe.json").read_text())
        old = (began_with.get("select_rows", 0), began_with.get("max_train_samples"))
        if old != (select_rows, max_train_samples):
            raise GlueDataError(f"{out} began with select_rows={old[0]} max_train_samples={old[1]}, before "
                                f"data.json recorded its rows; resume with those (key=value), or start a new "
                                "--output-dir")
    if write:
        write_atomic(path, json.dumps(asdict(record), indent=2))
