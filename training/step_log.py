"""The trainer's per-step record on rank 0: ``metrics.csv``, the trackers, the log's line, and the warning when the loss
saturates."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd

from training.trackers import Trackers

SATURATED_GRAD = 1e-7
_LISTWISE = (
    "Likely cause: within each prompt the implicit rewards of positives and negatives are farther apart than "
    "the softmax resolves (beta x |log-prob ratio| of summed log-probs); lower train.beta or set "
    "train.reward_normalization: mean."
)
_PAIRWISE = "Likely cause: every pair's margin is far past the sigmoid's knee; lower train.beta."
SATURATION_CAUSE = {
    "swepo": _LISTWISE,
    "infonca": _LISTWISE,
    "nca": _LISTWISE,
    "cpo": _LISTWISE,
    **{loss: _PAIRWISE for loss in ("dpo", "robust_dpo", "nca_pair", "rpo")},
}


def truncate_metrics(path: Path, start: int) -> None:
    """Keep only the rows of steps up to ``start``: the steps after it are about to be redone."""
    if path.is_file():
        kept = pd.read_csv(path).query("step <= @start") if start else None
        if kept is None or kept.empty:
            path.unlink()
        else:
            kept.to_csv(path, index=False)


def log_step(job_dir: Path, trackers: Trackers, row: dict, log_every: int) -> None:
    path = job_dir / "metrics.csv"
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)
    trackers.log({f"train/{k}": v for k, v in row.items() if k != "step"}, row["step"])
    if row["step"] % log_every == 0 or row["step"] == 1:  # the log's line; the console shows progress
        print(
            f"train: step {row['step']} loss {row['loss']:.4f} acc {row['accuracy']:.3f} grad {row['grad_norm']:.3f} "
            f"lr {row['lr']:.2e} tok/s {row['tokens_per_second']:.0f}",
            flush=True,
        )
