"""Scores and what the trainer reads from them: the programmatic reward (``task`` or ``module:function``), SWEPO's
deviations and weights, CPO's similarity ranks."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline import task
from pipeline.frames import active
from training.losses import swepo_deviations, swepo_log_weights


def load_scorer(spec: str) -> Callable[[str, str], float]:
    """A programmatic reward ``f(prompt, response) -> float``: ``task`` (the embedded task) or ``module:function``."""
    if spec == "task":
        return task.reward
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError(
            f"prepare.reward={spec!r}: expected 'source', 'task', 'auto', 'model:<dir>' or 'module:function'"
        )
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"prepare.reward={spec!r}: cannot import it ({exc})") from None
    if not callable(fn):
        raise ValueError(f"prepare.reward={spec!r} is not callable")
    return fn


def scorer_file(spec: str) -> str | None:
    """The source file of a ``module:function`` scorer's module (None where it has none, e.g. a built-in)."""
    module = spec.partition(":")[0]
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError) as exc:
        raise ValueError(f"prepare.reward={spec!r}: cannot find module {module!r} ({exc})") from None
    if found is None:
        raise ValueError(f"prepare.reward={spec!r}: no module named {module!r}")
    return found.origin if found.origin and Path(found.origin).is_file() else None


def drop_scores(batch: pd.DataFrame) -> pd.DataFrame:
    """No scores on any row (``prepare.reward: none``)."""
    return batch.assign(scores=[[] for _ in range(len(batch))])


def score_responses(batch: pd.DataFrame, scorer: Callable[[str, str], float]) -> pd.DataFrame:
    """Fill ``scores`` of active rows with a programmatic reward of every response."""
    batch = batch.copy()
    scores = list(batch["scores"])
    for i, ok in enumerate(active(batch)):
        if ok:
            prompt = batch["prompt"].iloc[i]
            values = [float(scorer(prompt, r)) for r in batch["responses"].iloc[i]]
            bad = [j for j, v in enumerate(values) if not np.isfinite(v)]
            if bad:
                raise ValueError(
                    f"reward of row id={batch['id'].iloc[i]!r}, response {bad[0]} is not finite: {values[bad[0]]}"
                )
            scores[i] = values
    batch["scores"] = scores
    return batch


def cosine_rank(response_embeddings: np.ndarray, anchor: int = 0) -> list[int]:
    """Order of responses by cosine similarity to the anchor's embedding, the anchor first (CPO's ranked variants)."""
    e = response_embeddings / np.maximum(np.linalg.norm(response_embeddings, axis=1, keepdims=True), 1e-12)
    sims = e @ e[anchor]
    others = sorted((i for i in range(len(e)) if i != anchor), key=lambda i: (-sims[i], i))
    return [anchor, *others]


def group_statistics(batch: pd.DataFrame) -> pd.DataFrame:
    """SWEPO ``deviation`` and ``log_weight`` where scores exist (:func:`training.losses.swepo_deviations`, weights at
    the paper's α = 1, p = 1: a record of the data to read, as the trainer recomputes both from the scores with
    ``train.swepo_*``); CPO ``rank`` (order by cosine to the ground truth) where a ground truth and response
    embeddings exist.

    Rows whose scores are all equal are kept (CPO and DPO can still use them); the SWEPO loss skips and
    counts them, and the writer reports how many there are.
    """
    batch = batch.copy()
    devs, log_ws, ranks = [], [], []
    has_embeddings = "response_embeddings" in batch
    for row in batch.itertuples():
        dev, log_w, rank = [], [], []
        if row.skip_reason == "":
            if len(row.scores):
                scores = torch.tensor([list(row.scores)], dtype=torch.float64)
                d, _ = swepo_deviations(scores, torch.ones_like(scores, dtype=torch.bool))
                dev, log_w = d[0].tolist(), swepo_log_weights(d[0]).tolist()
            if has_embeddings and "ground_truth" in list(row.origins):
                rank = cosine_rank(np.asarray(row.response_embeddings), list(row.origins).index("ground_truth"))
        devs.append(dev)
        log_ws.append(log_w)
        ranks.append(rank)
    batch["deviation"], batch["log_weight"], batch["rank"] = devs, log_ws, ranks
    return batch
