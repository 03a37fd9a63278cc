"""The trainer's data path: contrast groups read from the shards by address, never the whole dataset.

Every worker builds a small index (group id -> shard file and row range, from each shard's ``group_id`` column
alone) and then reads only the groups it trains, a step ahead of use. Shards are written in group order, so a
group's rows are contiguous in one file. Memory holds the index, the current and next micro-batches and the most
recently read row groups up to ``CACHE_BYTES`` (at least one), whatever the size of the dataset.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline import storage
from pipeline.records import check_schema_version
from pipeline.storage import Store
from training.batches import PACKED_COLUMNS, pack_records

# Steps draw groups from every shard, so a cache of few row groups re-reads one for nearly every group. Bounded by
# bytes, a small dataset stays in memory and a large one holds as many row groups as fit.
CACHE_BYTES = 256 * 2**20


class GroupReader:
    """Reads whole contrast groups (as :func:`training.batches.pack_records` lays them out) from shard files, on
    disk or in an object store: only the Parquet row groups that hold them, each a few byte ranges of its file."""

    def __init__(self, files: list[str | Path | Store], max_responses: int | None = None):
        self.files = [storage.at(f) for f in files]
        self.max_responses = max_responses
        self.where: dict[int, tuple[int, int, int]] = {}  # group id -> (file index, first row, rows)
        self._parquet = [file.parquet_file() for file in self.files]  # open for random access: footers read once
        self._row_groups: list[np.ndarray] = []  # per file: the first row of each row group, and its row count last
        for f, (file, parquet) in enumerate(zip(self.files, self._parquet)):
            sizes = [parquet.metadata.row_group(i).num_rows for i in range(parquet.num_row_groups)]
            self._row_groups.append(np.r_[0, np.cumsum(sizes)])
            ids = parquet.read(columns=["group_id"], use_threads=False)["group_id"].to_numpy()
            starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
            for start, end in zip(starts, np.r_[starts[1:], len(ids)]):
                gid = int(ids[start])
                if gid in self.where:
                    raise ValueError(
                        f"contrast group {gid} is split across {self.files[self.where[gid][0]]} and {file}"
                    )
                self.where[gid] = (f, int(start), int(end - start))
        self._cache: OrderedDict[tuple[int, int], pa.Table] = OrderedDict()
        self._lock = threading.Lock()  # the prefetch thread and the training thread share the cache

    @property
    def group_ids(self) -> list[int]:
        return sorted(self.where)

    def _row_group(self, f: int, i: int) -> pa.Table:
        if (f, i) in self._cache:
            self._cache.move_to_end((f, i))
        else:
            # one thread: Arrow's pool would decode on every core, beside this and the other workers' steps
            table = self._parquet[f].read_row_group(i, use_threads=False)
            check_schema_version(table)
            self._cache[(f, i)] = table
            while len(self._cache) > 1 and sum(t.nbytes for t in self._cache.values()) > CACHE_BYTES:
                self._cache.popitem(last=False)
        return self._cache[(f, i)]

    def _rows(self, f: int, start: int, rows: int) -> pa.Table:
        """Rows ``start .. start + rows`` of file ``f``, from the row groups that hold them."""
        bounds = self._row_groups[f]
        first, last = (
            np.searchsorted(bounds, start, "right") - 1,
            np.searchsorted(bounds, start + rows - 1, "right") - 1,
        )
        table = pa.concat_tables([self._row_group(f, i) for i in range(first, last + 1)])
        return table.slice(start - int(bounds[first]), rows)

    def read(self, group_ids: list[int]) -> list[dict]:
        """The groups, in the order asked for (row groups are visited in file order, so each is read once per call)."""
        parts = {}
        with self._lock:
            for gid in sorted(set(group_ids), key=lambda g: self.where[g][:2]):
                parts[gid] = self._rows(*self.where[gid])
        table = pa.concat_tables(parts.values())
        # Arrow to Python records, no pandas: a frame's sort and groupby cost 5 ms a step on four groups, 20x this
        records = table.select([c for c in PACKED_COLUMNS if c in table.column_names]).to_pylist()
        groups = {g["group_id"]: g for g in pack_records(records, self.max_responses)}
        return [groups[g] for g in group_ids]


class Prefetcher:
    """Runs ``load(key)`` for the next key in a background thread while the caller works on the current one."""

    def __init__(self, load):
        self._load, self._pool = load, ThreadPoolExecutor(max_workers=1)
        self._next: Future | None = None
        self._next_key = None

    def get(self, key, upcoming=None):
        """``load(key)`` (already underway if it was the ``upcoming`` of the previous call); starts ``upcoming``."""
        value = self._next.result() if self._next is not None and self._next_key == key else self._load(key)
        self._next = None
        if upcoming is not None:
            self._next, self._next_key = self._pool.submit(self._load, upcoming), upcoming
        return value

    def close(self):
        self._pool.shutdown(wait=True)


def split_heldout(group_ids: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, held-out) group ids: a seeded, size-stable split."""
    ids = sorted(group_ids)
    perm = np.random.default_rng([seed, 7]).permutation(len(ids))
    n_held = max(1, int(round(fraction * len(ids))))
    held = sorted(ids[i] for i in perm[:n_held])
    return sorted(set(ids) - set(held)), held
