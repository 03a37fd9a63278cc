"""Ray Data batches as pandas frames: what every prepare stage shares (per-row seeds, plain lists, the skip mark,
the flat order model stages batch responses in, and the seconds each stage spends)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

import numpy as np
import pandas as pd


def row_seed(seed: int, row_id: str, salt: str) -> int:
    """A per-row seed: results depend on the row and the run's seed, not on batch composition."""
    digest = hashlib.sha256(f"{seed}:{salt}:{row_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def as_lists(batch: pd.DataFrame) -> pd.DataFrame:
    """Numpy cells (what Arrow list columns become in pandas) back to plain lists.

    Ray Data turns a column of equal-length numpy arrays into a fixed-shape tensor column,
    which fails for strings; plain lists always become Arrow list columns.
    """
    for column in batch.columns:
        values = batch[column]
        if len(values) and any(isinstance(v, np.ndarray) for v in values):
            batch[column] = [_to_list(v) for v in values]
    return batch


def _to_list(value):
    if isinstance(value, np.ndarray):
        return [_to_list(v) for v in value] if value.dtype == object else value.tolist()
    return value


def timed(stage: str, fn: Callable[[pd.DataFrame], pd.DataFrame]) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """Wrap a stage so each row carries its share of the stage's compute seconds (summed by the writer)."""

    def run(batch: pd.DataFrame) -> pd.DataFrame:
        started = time.perf_counter()
        out = as_lists(fn(batch))
        out[f"seconds_{stage}"] = (time.perf_counter() - started) / max(len(out), 1)
        return out

    return run


def active(batch: pd.DataFrame) -> pd.Series:
    """Rows not marked for skipping."""
    return batch["skip_reason"] == ""


def flat_responses(batch: pd.DataFrame) -> list[tuple[int, int]]:
    """``(row, response)`` positions of every response of the active rows, the order model stages batch them in."""
    return [(i, j) for i, ok in enumerate(active(batch)) if ok for j in range(len(batch["responses"].iloc[i]))]


def regroup(batch: pd.DataFrame, positions: list[tuple[int, int]], values: list) -> list[list]:
    """Per-row lists of values computed in :func:`flat_responses` order (empty for inactive rows)."""
    rows: list[list] = [[] for _ in range(len(batch))]
    for (i, _), value in zip(positions, values):
        rows[i].append(value)
    return rows
