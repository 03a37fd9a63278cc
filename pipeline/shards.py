"""Training shards: Parquet files of whole contrast groups plus a manifest that makes the prepare job resumable.

The manifest records the schema version, the hash of everything that determines the records
(config sections and the policy's files), and per shard its rows, groups, SHA-256 and stage
statistics. It is rewritten atomically after each shard (on disk or in an object store: pipeline/storage.py), so a job
stopped at any point can be
re-run: shards whose checksum still matches are kept and only the rest is computed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import ray

from pipeline import storage
from pipeline.records import SCHEMA_VERSION, check_schema_version, extend_schema, with_version
from pipeline.storage import Store

# Columns the prepare job adds to the base record (see DESIGN.md "Records").
SHARD_SCHEMA = extend_schema(
    {
        "prompt_ids": pa.list_(pa.int32()),
        "response_ids": pa.list_(pa.list_(pa.int32())),
        "prompt_embedding": pa.list_(pa.float32()),
        "response_embeddings": pa.list_(pa.list_(pa.float32())),
        "deviation": pa.list_(pa.float64()),
        "log_weight": pa.list_(pa.float64()),
        "rank": pa.list_(pa.int32()),
        "group_id": pa.int64(),
        "group_position": pa.int32(),
        "group_size": pa.int32(),
        "group_similarity": pa.list_(pa.float32()),
        "ref_logps": pa.list_(pa.float64()),
    }
)
# Empty lists mean "not computed" inside the graph; in shards they are nulls.
_NULL_IF_EMPTY = ("scores", "deviation", "log_weight", "rank", "ref_logps", "response_embeddings", "prompt_embedding")
MANIFEST = "manifest.json"


def shard_name(key: str) -> str:
    return f"shard-{key}.parquet"


def is_shard_name(name: str) -> bool:
    """Whether ``name`` is a shard file this module names: a plain file name inside the shard directory, never a
    path."""
    return name.startswith("shard-") and name.endswith(".parquet") and Path(name).name == name and ".." not in name


def file_sha256(path: Path) -> str:
    return storage.at(path).sha256()


def content_fingerprint(path: str | Path, cache: dict | None = None) -> str:
    """SHA-256 over the contents of a file, or of every file of a directory (a retrained model with the same
    file sizes must not pass for the old one). ``cache`` (path -> ``[size, mtime_ns, sha256]``, updated in place)
    skips re-reading a file whose size and modification time are unchanged: hashing a 70B model's weights on
    every run would cost minutes."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256()
    for file in files:
        h.update(file.relative_to(path).as_posix().encode() if path.is_dir() else file.name.encode())
        stat, key = file.stat(), str(file.resolve())
        known = (cache or {}).get(key)
        if known and known[:2] == [stat.st_size, stat.st_mtime_ns]:
            digest = known[2]
        else:
            digest = file_sha256(file)
            if cache is not None:
                cache[key] = [stat.st_size, stat.st_mtime_ns, digest]
        h.update(digest.encode())
    return h.hexdigest()[:16]


def to_shard_table(rows: pd.DataFrame) -> pa.Table:
    rows = rows.copy()
    for column in _NULL_IF_EMPTY:
        if column in rows:
            rows[column] = [None if v is None or len(v) == 0 else v for v in rows[column]]
    for name in SHARD_SCHEMA.names:
        if name not in rows:
            rows[name] = None
    table = pa.Table.from_pandas(rows[SHARD_SCHEMA.names], schema=SHARD_SCHEMA, preserve_index=False)
    # pandas metadata would name the pandas dtypes of this process (Arrow-backed ones among them),
    # which another reader's to_pandas() may not understand; the Arrow schema says everything.
    return with_version(table.replace_schema_metadata({}))


# Rows per Parquet row group of a shard: the trainer reads the row groups that hold its groups, as byte ranges.
ROW_GROUP_ROWS = 64


def write_shard(rows: pd.DataFrame, directory: str | Path | Store, name: str, stats: dict) -> dict:
    """Write one shard (whole groups) atomically and return its manifest entry; runs on the worker that holds it."""
    table = to_shard_table(rows)
    data = (storage.at(directory) / name).write_parquet(table, row_group_size=ROW_GROUP_ROWS)
    return {
        "rows": table.num_rows,
        "groups": int(rows["group_id"].nunique()),
        "sha256": hashlib.sha256(data).hexdigest(),
        "node": ray.get_runtime_context().get_node_id() if ray.is_initialized() else None,
        "stats": stats,
    }


@dataclass
class Manifest:
    """What has been written so far; ``shards`` maps file name to its entry."""

    directory: Store
    config_hash: str
    total_shards: int = 0
    shards: dict[str, dict] = field(default_factory=dict)
    source: dict = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return bool(self.total_shards) and len(self.shards) == self.total_shards

    @property
    def path(self) -> Store:
        return self.directory / MANIFEST

    @classmethod
    def open(cls, directory: str | Path | Store, config_hash: str) -> tuple[Manifest, list[str]]:
        """Load the manifest if it matches ``config_hash`` and return it with notes on what was discarded."""
        directory = storage.at(directory)
        path = directory / MANIFEST
        notes: list[str] = []
        if not path.is_file():
            return cls(directory, config_hash), notes
        data = json.loads(path.read_text())
        if data.get("schema_version") != SCHEMA_VERSION or data.get("config_hash") != config_hash:
            notes.append("settings or policy changed since the last run: rebuilding every shard")
            for name in filter(is_shard_name, data.get("shards", {})):  # an edited manifest must not delete other files
                (directory / name).delete()
            return cls(directory, config_hash), notes
        manifest = cls(directory, config_hash, data.get("total_shards", 0), {}, data.get("source", {}))
        for name, entry in data.get("shards", {}).items():
            file = directory / name
            if file.is_file() and file.sha256() == entry["sha256"]:
                manifest.shards[name] = entry
            else:
                notes.append(f"{name}: missing or checksum mismatch, recomputing it")
        return manifest, notes

    def commit(self, name: str, entry: dict) -> None:
        """Record a shard a worker has written (its file is already in place under its final name)."""
        self.shards[name] = entry
        self.save()

    def add(self, key: str | int, rows: pd.DataFrame, stats: dict) -> Store:
        """Write and commit a shard from this process."""
        name = shard_name(str(key))
        self.commit(name, write_shard(rows, self.directory, name, stats))
        return self.directory / name

    def save(self) -> None:
        """Replace the manifest in one atomic write (:meth:`pipeline.storage.Store.write_bytes`)."""
        data = {
            "schema_version": SCHEMA_VERSION,
            "config_hash": self.config_hash,
            "total_shards": self.total_shards,
            "complete": self.complete,
            "rows": sum(e["rows"] for e in self.shards.values()),
            "source": self.source,
            "shards": dict(sorted(self.shards.items())),
        }
        self.path.write_text(json.dumps(data, indent=2))


def read_manifest(directory: str | Path | Store) -> dict:
    path = storage.at(directory) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `python -m jobs.prepare --config ...` first")
    return json.loads(path.read_text())


def verified_shard_files(directory: str | Path | Store) -> list[Store]:
    """The shard files of a complete prepare run, each checked against the manifest's SHA-256."""
    directory = storage.at(directory)
    path, data = directory / MANIFEST, read_manifest(directory)
    if not data.get("complete"):
        raise ValueError(
            f"{path}: prepare did not finish ({len(data['shards'])}/{data['total_shards']} shards); re-run it to resume"
        )
    files = []
    for name, entry in sorted(data["shards"].items()):
        file = directory / name
        if not file.is_file() or file.sha256() != entry["sha256"]:
            raise ValueError(f"{file}: missing or checksum does not match {path}; re-run prepare to rebuild it")
        files.append(file)
    return files


def shard_group_ids(files: list[Store]) -> list[int]:
    """The contrast-group ids of shard files (:func:`verified_shard_files`), sorted, reading only that column."""
    return sorted({g for f in files for g in f.read_table(columns=["group_id"])["group_id"].to_pylist()})


def read_shards(directory: str | Path) -> pa.Table:
    """All shards of a complete prepare run, verified, as one table."""
    tables = [file.read_table() for file in verified_shard_files(directory)]
    for table in tables:
        check_schema_version(table)
    return pa.concat_tables(tables)
