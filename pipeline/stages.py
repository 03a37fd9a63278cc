"""Prepare-job stages as plain functions over pandas batches and tensors.

Each function here is what one Ray Data ``map_batches`` step runs (``pipeline.graph`` wires
them); none of them needs a cluster, so they are unit-tested alone. Token ids are the source
of truth for a response (``response_ids``): negatives are made as tokens, and the trainer
and the reference scorer read those exact tokens, never a re-tokenization of the text.

Rows that cannot be used are not dropped inside a stage: the stage sets ``skip_reason`` and
later stages pass such rows through, so the writer can count every skip by its reason.
Absent values are empty (``""``, ``[]``) rather than null so every batch has the same Arrow
types; the shard writer turns them into nulls.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline import task
from pipeline.tokenize import encode_prompt, encode_response
from training.losses import swepo_deviations, swepo_log_weights


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


def best_scored_first(origins: list[str], scores: list[float]) -> list[int] | None:
    """The order that puts a scored row's best response first (the first of equals), where the row has neither a
    ground truth nor a chosen response to anchor on; None where nothing moves."""
    if not len(scores) or {"ground_truth", "chosen"} & set(origins):
        return None
    best = int(np.argmax(scores))
    return [best, *(i for i in range(len(origins)) if i != best)] if best else None


def tokenize_records(
    batch: pd.DataFrame,
    tokenizer,
    max_length: int,
    on_overlength: str,
    templated: bool = False,
    end_id: int | None = None,
) -> pd.DataFrame:
    """Add ``prompt_ids``, ``response_ids`` and ``truncated`` (responses cut); mark rows over ``max_length`` tokens
    (rows already marked keep their ``skip_reason`` and are not tokenized).
    ``templated``: the prompts were rendered by a chat template (see :func:`pipeline.tokenize.encode_prompt`);
    ``end_id``: the token each response ends with (:func:`pipeline.tokenize.response_end_id`; None: EOS).

    ``on_overlength="truncate"`` keeps the start of prompt + response, as TRL's DPO collator does
    (``truncation_mode="keep_start"``); a prompt that alone fills ``max_length`` leaves no response
    token to learn from, so its row is skipped as ``prompt_over_length``.
    """
    batch = batch.copy()
    prompt_ids, response_ids, truncated, reasons = [], [], [], []
    moved: dict = {}  # row index -> responses, origins and scores in best-scored-first order
    for row in batch.itertuples():
        if getattr(row, "skip_reason", ""):  # left out before tokenizing (a bad source row)
            prompt_ids.append([])
            response_ids.append([])
            truncated.append(0)
            reasons.append(row.skip_reason)
            continue
        p = encode_prompt(tokenizer, row.prompt, templated)
        order = best_scored_first(list(row.origins), [] if row.scores is None else list(row.scores))
        if order:
            moved[row.Index] = {
                c: [list(v)[i] for i in order]
                for c, v in (("responses", row.responses), ("origins", row.origins), ("scores", row.scores))
            }
        rs = [encode_response(tokenizer, r, end_id) for r in moved.get(row.Index, {}).get("responses", row.responses)]
        longest = len(p) + max(len(r) for r in rs)
        reason, cut = "", 0
        if longest > max_length:
            if on_overlength == "error":
                raise ValueError(
                    f"{row.source} row {row.row}, field 'responses': prompt + response is {longest} tokens, "
                    f"over model.max_length={max_length} (set prepare.on_overlength: skip or truncate)"
                )
            if on_overlength == "skip":
                reason = "over_length"
            elif len(p) >= max_length:
                reason = "prompt_over_length"
            else:
                cut = sum(len(p) + len(r) > max_length for r in rs)
                rs = [r[: max_length - len(p)] for r in rs]
        prompt_ids.append(p)
        response_ids.append(rs)
        truncated.append(cut)
        reasons.append(reason)
    for column in ("responses", "origins", "scores"):
        batch[column] = [moved[i][column] if i in moved else v for i, v in zip(batch.index, batch[column])]
    batch["prompt_ids"] = prompt_ids
    batch["response_ids"] = response_ids
    batch["truncated"] = truncated
    batch["skip_reason"] = reasons
    return batch


def anchor_index(origins) -> int:
    """The response negatives are made from and contrasted with, by every stage and the trainer alike: the ground
    truth, else the chosen, else the first, which :func:`tokenize_records` makes the source's best-scored one (so
    the anchor stays where it was when a reward later rescores the responses)."""
    origins = list(origins)
    for origin in ("ground_truth", "chosen"):
        if origin in origins:
            return origins.index(origin)
    return 0


def append_negatives(batch: pd.DataFrame, new_ids: list[list[list[int]]], origin: str, tokenizer) -> pd.DataFrame:
    """Append token-id negatives (one list per row) with their decoded text and origin.

    A negative identical to the row's anchor is not a negative: it is dropped and counted in
    ``duplicate_negatives`` (a sample can reproduce the ground truth exactly).
    """
    batch = batch.copy()
    responses, origins, ids, scores, duplicates = [], [], [], [], []
    previous = batch["duplicate_negatives"] if "duplicate_negatives" in batch else [0] * len(batch)
    for row, extra, dup in zip(batch.itertuples(), new_ids, previous):
        anchor = [int(t) for t in row.response_ids[anchor_index(row.origins)]]
        kept = [[int(t) for t in x] for x in extra if [int(t) for t in x] != anchor]
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


def cosine_rank(response_embeddings: np.ndarray, anchor: int = 0) -> list[int]:
    """Order of responses by cosine similarity to the anchor's embedding, the anchor first (CPO's ranked variants)."""
    e = response_embeddings / np.maximum(np.linalg.norm(response_embeddings, axis=1, keepdims=True), 1e-12)
    sims = e @ e[anchor]
    others = sorted((i for i in range(len(e)) if i != anchor), key=lambda i: (-sims[i], i))
    return [anchor, *others]


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
