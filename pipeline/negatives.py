"""Synthetic negatives made as tokens: truncations and meanfield resamples of the anchor, and how any stage's
negatives are appended to a row (token ids are the source of truth; the text is decoded from them)."""

from __future__ import annotations

import random

import pandas as pd
import torch

from pipeline.frames import active
from pipeline.stages import anchor_index


def append_negatives(
    batch: pd.DataFrame, new_ids: list[list[list[int]]], origin: str, tokenizer, drop_anchor_copies: bool = True
) -> pd.DataFrame:
    """Append token-id negatives (one list per row) with their decoded text and origin.

    A negative identical to the row's anchor is not a negative: it is dropped and counted in
    ``duplicate_negatives`` (a sample can reproduce the ground truth exactly), unless ``drop_anchor_copies`` is
    false (self-samples, where the ground truth leaves the group and a sample equal to it is a good one).
    """
    batch = batch.copy()
    responses, origins, ids, scores, duplicates = [], [], [], [], []
    previous = batch["duplicate_negatives"] if "duplicate_negatives" in batch else [0] * len(batch)
    for row, extra, dup in zip(batch.itertuples(), new_ids, previous):
        anchor = [int(t) for t in row.response_ids[anchor_index(row.origins)]]
        kept = [[int(t) for t in x] for x in extra if not drop_anchor_copies or [int(t) for t in x] != anchor]
        responses.append(list(row.responses) + [tokenizer.decode(x, skip_special_tokens=True) for x in kept])
        origins.append(list(row.origins) + [origin] * len(kept))
        ids.append([list(x) for x in row.response_ids] + kept)
        # Source scores do not cover synthetic responses; the rewards stage fills them.
        scores.append([] if len(extra) else list(row.scores))
        duplicates.append(int(dup) + len(extra) - len(kept))
    batch["responses"], batch["origins"], batch["response_ids"], batch["scores"] = responses, origins, ids, scores
    batch["duplicate_negatives"] = duplicates
    return batch


def truncation_negatives(response_ids: list[int], n: int, eos_id: int, rng: random.Random) -> list[list[int]]:
    """``n`` copies of a response cut at a random token (keeping at least one) and ended with EOS."""
    body = response_ids[:-1] if response_ids and response_ids[-1] == eos_id else response_ids
    if len(body) < 2:
        return []
    return [body[: rng.randint(1, len(body) - 1)] + [eos_id] for _ in range(n)]


def meanfield_resample(
    response_ids: torch.Tensor, logits: torch.Tensor, fraction: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample ``round(fraction * T)`` response positions independently from the model's next-token distribution.

    Args:
        response_ids: ``[T]`` ground-truth response tokens (the final EOS is never resampled).
        logits: ``[T, V]`` teacher-forced logits, ``logits[t]`` predicting ``response_ids[t]``.
    Returns: ``(new_ids [T], positions [m])``; only ``positions`` can differ from ``response_ids``.
    """
    T = response_ids.shape[0] - 1  # keep EOS so the negative stays a finished sequence
    m = int(round(fraction * T))
    if T <= 0 or m == 0:
        return response_ids.clone(), torch.empty(0, dtype=torch.long)
    positions = torch.randperm(T, generator=generator)[:m].sort().values
    probs = torch.softmax(logits[positions].float(), dim=-1)
    new_ids = response_ids.clone()
    new_ids[positions] = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return new_ids, positions


def without_ground_truth(batch: pd.DataFrame) -> pd.DataFrame:
    """Each active row's group without its ground truth once every sample is scored
    (``prepare.negatives.keep_ground_truth=false``): the model's samples alone, in the order they were drawn.
    The rows were lone ground truths when tokenized, so none of what remains was cut (``truncated`` 0)."""
    batch = batch.copy()
    columns = {c: list(batch[c]) for c in ("responses", "origins", "scores", "response_ids")}
    truncated = list(batch["truncated"])
    for i, ok in enumerate(active(batch)):
        if ok:
            keep = [j for j, o in enumerate(batch["origins"].iloc[i]) if o != "ground_truth"]
            for values in columns.values():
                values[i] = [list(values[i])[j] for j in keep]
            truncated[i] = 0
    for c, values in columns.items():
        batch[c] = values
    batch["truncated"] = truncated
    return batch
