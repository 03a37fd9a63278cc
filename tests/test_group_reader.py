"""The trainer's data path: groups read by address from shard files, in the order asked for, whole."""

from __future__ import annotations

import pandas as pd
import pytest

from pipeline.shards import Manifest
from training.batches import pack_groups
from training.group_reader import GroupReader, Prefetcher
from training.heldout_metrics import heldout_share


def _rows(gids_sizes):
    rows = []
    for gid, size in gids_sizes:
        for k in range(size):
            rows.append(
                {
                    "id": f"{gid}-{k}",
                    "prompt": "p",
                    "responses": ["a", "b"],
                    "origins": ["chosen", "rejected"],
                    "scores": None,
                    "source": "t",
                    "row": 1,
                    "prompt_ids": [1, 2],
                    "response_ids": [[3, 4], [5, 6]],
                    "group_id": gid,
                    "group_position": k,
                    "group_size": size,
                    "group_similarity": [1.0] * size,
                    "skip_reason": "",
                    "ref_logps": [-1.0 - gid, -2.0],
                }
            )
    return pd.DataFrame(rows)


def test_reads_just_the_asked_groups_across_shards(tmp_path):
    manifest, _ = Manifest.open(tmp_path, "h")
    shards = [[(0, 2), (1, 2), (2, 2)], [(3, 2), (4, 1)]]
    for i, part in enumerate(shards):
        manifest.add(i, _rows(part), {})
    reader = GroupReader(sorted(tmp_path.glob("shard-*.parquet")))
    assert reader.group_ids == [0, 1, 2, 3, 4]
    got = reader.read([4, 0, 3])
    assert [g["group_id"] for g in got] == [4, 0, 3]
    expected = {g["group_id"]: g for g in pack_groups(_rows([(0, 2), (3, 2), (4, 1)]))}
    assert got == [expected[4], expected[0], expected[3]]


def test_a_group_split_across_shards_is_an_error(tmp_path):
    manifest, _ = Manifest.open(tmp_path, "h")
    manifest.add(0, _rows([(0, 2)]), {})
    manifest.add(1, _rows([(0, 2)]), {})
    with pytest.raises(ValueError, match="group 0 is split"):
        GroupReader(sorted(tmp_path.glob("shard-*.parquet")))


def test_heldout_share_gives_every_rank_the_same_number_of_micro_batches_and_each_group_once():
    held = list(range(7))
    for world in (1, 2, 3, 4):
        shares = [heldout_share(held, r, world, 2) for r in range(world)]
        assert len({len(s) for s in shares}) == 1
        counted = sorted(g for s in shares for chunk in s if chunk is not None for g in chunk)
        assert counted == held


def test_prefetcher_returns_each_value_once_in_order():
    calls = []
    p = Prefetcher(lambda k: calls.append(k) or k * 10)
    assert [p.get(s, s + 1 if s < 3 else None) for s in range(4)] == [0, 10, 20, 30]
    p.close()
    assert calls == [0, 1, 2, 3]
