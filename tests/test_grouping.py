"""Contrast groups at scale: k-means buckets, exact grouping inside each, shards of whole groups, quality kept."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline import grouping


def test_neighbor_groups_hold_related_prompts_and_random_is_a_partition():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 16))
    emb = np.concatenate([c + 0.05 * rng.normal(size=(8, 16)) for c in centers])
    labels = np.repeat(np.arange(3), 8)
    groups = grouping.contrast_groups(emb, "neighbors", 4, seed=0)
    assert sorted(i for g in groups for i in g) == list(range(24))
    assert all(len(set(labels[g])) == 1 for g in groups)
    rand = grouping.contrast_groups(emb, "random", 4, seed=0)
    assert sorted(i for g in rand for i in g) == list(range(24))
    assert any(len(set(labels[g])) > 1 for g in rand)
    sim = grouping.group_similarity(emb, groups[0])
    assert sim.shape == (4, 4) and np.allclose(np.diag(sim), 1.0, atol=1e-5)


def _clustered(n: int, clusters: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, dim))
    return (centers[rng.integers(clusters, size=n)] + 0.4 * rng.normal(size=(n, dim))).astype(np.float32)


def _bucket_rows(e: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": [f"r{i:05d}" for i in range(len(e))],
            "prompt_embedding": list(e),
            "response_ids": [[[i, 1]] for i in range(len(e))],
            "origins": [["ground_truth"]] * len(e),
        }
    )


def _grouped(e: np.ndarray, bucket_rows: int, method: str = "neighbors") -> pd.DataFrame:
    return grouping.group_in_process(_bucket_rows(e), method, 4, bucket_rows, 8, 1, seed=0)


def _mean_similarity(rows: pd.DataFrame) -> float:
    total, pairs = grouping.mean_within_group_similarity(rows)
    return total / pairs


def test_bucketed_groups_cover_every_prompt_once_in_whole_groups_per_shard():
    e = _clustered(3000, 40)
    rows = _grouped(e, bucket_rows=256)
    assert sorted(rows["id"]) == sorted(_bucket_rows(e)["id"])
    sizes = rows.groupby("group_id").size()
    assert sizes.max() == 4 and (sizes < 4).sum() <= rows["bucket"].nunique()  # at most one short group per bucket
    assert rows.groupby("group_id")["shard"].nunique().max() == 1  # a group never spans two shards
    assert rows.groupby("shard")["group_id"].nunique().max() <= 8
    for _, g in rows.groupby("group_id"):
        assert sorted(g["group_position"]) == list(range(len(g)))
        assert all(len(n) == min(1, len(g) - 1) for n in g["batch_negative_ids"])


def test_one_bucket_is_the_exact_greedy_grouping():
    e = _clustered(300, 10)
    rows = _grouped(e, bucket_rows=1000)
    assert rows["bucket"].nunique() == 1
    order = np.argsort(_bucket_rows(e)["id"].to_numpy())
    exact = grouping.contrast_groups(e[order], "neighbors", 4, seed=0)
    got = sorted(sorted(int(i[1:]) for i in g["id"]) for _, g in rows.groupby("group_id"))
    assert got == sorted(sorted(int(order[m]) for m in members) for members in exact)


def test_bucketed_grouping_keeps_most_of_the_exact_groupings_similarity():
    e = _clustered(4000, 60)
    exact = _mean_similarity(_grouped(e, bucket_rows=10_000))
    bucketed = _mean_similarity(_grouped(e, bucket_rows=500))
    rand = _mean_similarity(_grouped(e, bucket_rows=500, method="random"))
    assert bucketed >= 0.9 * exact and rand < 0.5 * exact


def test_oversized_buckets_are_split_and_the_sample_does_not_depend_on_order():
    e = _clustered(2000, 2)
    rows = _bucket_rows(e)
    rows["bucket"] = 0
    grouped = grouping.bucket_groups(rows, "neighbors", 4, 300, 8, 0, seed=0)
    assert len(grouped) == 2000 and grouped["group_id"].nunique() == 500
    ids = rows["id"].tolist()
    assert list(np.array(ids)[grouping.in_sample(ids, 3, 0.1)]) == sorted(
        np.array(ids[::-1])[grouping.in_sample(ids[::-1], 3, 0.1)].tolist()
    )
