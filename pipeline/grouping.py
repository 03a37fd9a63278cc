"""RPO contrast groups at any scale: prompts bucketed by k-means centroids, groups formed inside each bucket.

Exact greedy nearest-neighbour grouping costs O(N^2). Here centroids are fitted on a bounded, seeded sample
of prompt embeddings (spherical k-means, one centroid per ``grouping.bucket_rows`` prompts); a map stage
sends each prompt to its nearest centroid; each bucket (``groupby(bucket).map_groups``) is then grouped exactly,
as :func:`contrast_groups` does for the whole set, and its groups are cut into shards there. Buckets larger than
twice ``bucket_rows`` are split along their principal direction, so no worker ever holds an unbounded bucket.
The cost is linear in N; with at most ``bucket_rows`` prompts there is one bucket and the result is the exact
grouping. ``random`` puts prompts into buckets by a seeded hash and groups them at random (the paper's baseline).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from pipeline.frames import row_seed
from pipeline.stages import anchor_index

SAMPLE_PER_BUCKET = 64
MAX_SAMPLE = 50_000


def contrast_groups(embeddings: np.ndarray, method: str, group_size: int, seed: int) -> list[list[int]]:
    """Partition prompts into contrast groups of ``group_size`` (the last may be smaller).

    ``neighbors``: repeatedly take the first unassigned prompt in a seeded random order and
    group it with its most similar unassigned prompts, so groups hold related prompts.
    ``random``: a seeded random partition (the RPO paper's baseline).
    """
    n = len(embeddings)
    order = np.random.default_rng(seed).permutation(n)
    if method == "random":
        return [sorted(order[i : i + group_size].tolist()) for i in range(0, n, group_size)]
    if method != "neighbors":
        raise ValueError(f"unknown grouping method {method!r}")
    e = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    free = np.ones(n, dtype=bool)
    groups = []
    for anchor in order:
        if not free[anchor]:
            continue
        sims = e @ e[anchor]
        sims[~free] = -np.inf
        members = np.argsort(-sims, kind="stable")[: min(group_size, int(free.sum()))]
        free[members] = False
        groups.append(sorted(members.tolist()))
    return groups


def group_similarity(embeddings: np.ndarray, members: list[int]) -> np.ndarray:
    """Cosine similarities ``[B, B]`` between the prompts of one group, in member order."""
    e = embeddings[members]
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    return e @ e.T


def bucket_count(rows: int, bucket_rows: int) -> int:
    return max(1, math.ceil(rows / bucket_rows))


def sample_fraction(rows: int, buckets: int) -> float:
    """Share of prompts the centroids are fitted on: bounded by ``MAX_SAMPLE`` whatever the data size."""
    return min(1.0, min(MAX_SAMPLE, SAMPLE_PER_BUCKET * buckets) / max(rows, 1))


def in_sample(ids, seed: int, fraction: float) -> np.ndarray:
    """A seeded sample by id hash: the same prompts whatever the block layout or the number of workers."""
    cut = int(fraction * 2**63)
    return np.array([row_seed(seed, i, "centroid-sample") < cut for i in ids], dtype=bool)


def fit_centroids(embeddings: np.ndarray, k: int, seed: int, iterations: int = 25) -> np.ndarray:
    """Spherical k-means (cosine) with k-means++ seeding: ``[k, D]`` unit centroids from ``[N, D]`` embeddings."""
    e = _unit(embeddings.astype(np.float32))
    k = min(k, len(e))
    rng = np.random.default_rng(seed)
    centroids = [e[rng.integers(len(e))]]
    for _ in range(1, k):
        distance = np.maximum(1.0 - np.max(e @ np.stack(centroids).T, axis=1), 0.0)
        total = distance.sum()
        centroids.append(e[rng.choice(len(e), p=distance / total)] if total > 0 else e[rng.integers(len(e))])
    c = np.stack(centroids)
    for _ in range(iterations):
        nearest = np.argmax(e @ c.T, axis=1)
        for j in range(k):
            members = e[nearest == j]
            if len(members):
                c[j] = members.sum(axis=0)
        c = _unit(c)
    return c


def assign_buckets(batch: pd.DataFrame, centroids: np.ndarray | None, buckets: int, seed: int) -> pd.DataFrame:
    """Add ``bucket``: the nearest centroid, or (``centroids=None``: random grouping) a seeded hash of the id."""
    batch = batch.copy()
    if centroids is None:
        batch["bucket"] = [row_seed(seed, i, "bucket") % buckets for i in batch["id"]]
    elif len(batch):
        e = np.stack([np.asarray(x, dtype=np.float32) for x in batch["prompt_embedding"]])
        batch["bucket"] = np.argmax(_unit(e) @ centroids.T, axis=1)
    else:
        batch["bucket"] = np.zeros(0, dtype=np.int64)
    return batch


def _split_large(e: np.ndarray, bucket_rows: int) -> list[np.ndarray]:
    """Index chunks of at most ``bucket_rows`` along the first principal direction (one chunk if it fits twice)."""
    if len(e) <= 2 * bucket_rows:
        return [np.arange(len(e))]
    centred = e - e.mean(axis=0)
    direction = np.linalg.svd(centred[: 4 * bucket_rows], full_matrices=False)[2][0]
    order = np.argsort(centred @ direction, kind="stable")
    return [np.sort(order[i : i + bucket_rows]) for i in range(0, len(order), bucket_rows)]


def bucket_groups(
    rows: pd.DataFrame,
    method: str,
    group_size: int,
    bucket_rows: int,
    shard_groups: int,
    batch_negatives: int,
    seed: int,
) -> pd.DataFrame:
    """One bucket's prompts grouped: adds ``group_id`` (unique across buckets), ``group_position``, ``group_size``,
    ``group_similarity`` (the member's row of the group's cosine matrix), ``batch_negative_ids`` (the anchors of
    up to ``batch_negatives`` other members) and ``shard`` (``"{bucket}-{part}"``: whole groups only)."""
    rows = rows.sort_values("id", kind="stable").reset_index(drop=True)
    bucket = int(rows["bucket"].iloc[0])
    e = np.stack([np.asarray(x, dtype=np.float32) for x in rows["prompt_embedding"]])
    groups = []
    for chunk in _split_large(e, bucket_rows):
        groups += [[int(chunk[m]) for m in g] for g in contrast_groups(e[chunk], method, group_size, seed + bucket)]
    n = len(rows)
    gid, pos, size, sims, negatives, shard = ([None] * n for _ in range(6))
    anchors = [list(ids[anchor_index(origins)]) for ids, origins in zip(rows["response_ids"], rows["origins"])]
    for local, members in enumerate(groups):
        sim = group_similarity(e, members)
        for k, i in enumerate(members):
            gid[i], pos[i], size[i] = (bucket << 24) | local, k, len(members)
            sims[i] = sim[k].astype(np.float32).tolist()
            negatives[i] = [anchors[j] for j in members if j != i][:batch_negatives]
            shard[i] = f"{bucket:05d}-{local // shard_groups:04d}"
    rows["group_id"], rows["group_position"], rows["group_size"] = gid, pos, size
    rows["group_similarity"], rows["batch_negative_ids"], rows["shard"] = sims, negatives, shard
    return rows.sort_values(["group_id", "group_position"], kind="stable").reset_index(drop=True)


def group_in_process(
    rows: pd.DataFrame,
    method: str,
    group_size: int,
    bucket_rows: int,
    shard_groups: int,
    batch_negatives: int,
    seed: int,
) -> pd.DataFrame:
    """The prepare graph's grouping pass on rows held in one process (tests and benchmarks): the same sample,
    centroids, buckets and per-bucket grouping."""
    buckets = bucket_count(len(rows), bucket_rows)
    centroids = None
    if method == "neighbors" and buckets > 1:
        sample = in_sample(rows["id"], seed, sample_fraction(len(rows), buckets))
        picked = rows[sample].sort_values("id")
        centroids = fit_centroids(np.stack([np.asarray(e) for e in picked["prompt_embedding"]]), buckets, seed)
        buckets = len(centroids)
    rows = assign_buckets(rows, centroids, buckets, seed)
    parts = [
        bucket_groups(part, method, group_size, bucket_rows, shard_groups, batch_negatives, seed)
        for _, part in rows.groupby("bucket")
    ]
    return pd.concat(parts, ignore_index=True)


def mean_within_group_similarity(rows: pd.DataFrame) -> tuple[float, int]:
    """``(sum, count)`` of the cosine similarities between distinct members of the same group."""
    total, count = 0.0, 0
    for sim, k in zip(rows["group_similarity"], rows["group_position"]):
        others = [s for j, s in enumerate(sim) if j != k]
        total += float(np.sum(others))
        count += len(others)
    return total, count


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
