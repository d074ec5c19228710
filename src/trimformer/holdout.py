"""Training rows set aside to choose checkpoints on, so the dev metrics a report gives were never
used to make a choice.

Stages that keep their best weights (`eval_every`, or several epochs) evaluate often and keep the
best; chosen on the dev set, the kept metric is the best of several noisy draws of the number the
report then states, which flatters it. With `select_rows: N` the choice is made on N training
rows no stage trains on, and dev is only ever measured. Files with rows beyond
`max_train_samples` (SST-2 in the default recipe reads 6,000 of 67,349) give the holdout from
rows that would not have been trained on anyway; smaller ones give it out of their training rows.
"""

from __future__ import annotations

from typing import TypeVar

import torch

from trimformer.glue import GlueDataError

Row = TypeVar("Row")


def rows_to_read(max_train_samples: int | None, select_rows: int) -> int | None:
    """How many rows of the train file to read: the training rows and the holdout together."""
    return None if max_train_samples is None else max_train_samples + select_rows


def split_holdout(rows: list[Row], select_rows: int, seed: int,
                  max_train_samples: int | None = None) -> tuple[list[Row], list[Row]]:
    """(training rows, holdout rows): `select_rows` rows drawn at random with `seed` (GLUE files are
    not shuffled: CoLA's are grouped by source), the rest in file order, at most `max_train_samples`.
    GlueDataError when the holdout would leave nothing to train on."""
    if select_rows <= 0:
        return rows[:max_train_samples], []
    if select_rows >= len(rows):
        raise GlueDataError(f"select_rows={select_rows} holds out every training row: the train file "
                            f"has {len(rows)}; choose fewer, or select_rows=0 to choose on the dev set")
    generator = torch.Generator().manual_seed(seed)
    held = set(torch.randperm(len(rows), generator=generator)[:select_rows].tolist())
    train = [row for i, row in enumerate(rows) if i not in held]
    return train[:max_train_samples], [rows[i] for i in sorted(held)]
