"""Where jobs keep what they write: a local directory or an object store (``s3://``, ``gs://``), through ``pyarrow.fs``.

A :class:`Store` is a path in a filesystem. Shards, the manifest and prepare's work files are written to it by the
workers themselves; Ray Train's checkpoints go to ``ray.storage_path`` through the same filesystem. What a library
must write as local files (models, logs, TensorBoard events, metrics) goes to a local directory, the job's staging
directory (:meth:`configs.schema.Config.job_dir`), which is copied into the store when the job ends and at each
checkpoint (:meth:`Store.push`); a job that needs an earlier job's model fetches it (:meth:`Store.pull`).

An object store has no rename. Every file here is written by one upload that completes or leaves nothing (a PUT, or
a multipart upload completed on close): a reader sees the old object or the new one whole, never part of one. The
manifest's commit is such an upload of the whole manifest (:mod:`pipeline.shards`), as atomic on S3 and GCS as a
rename is on disk.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from configs.base import check_location, is_uri
from configs.runtime import StorageConfig
from configs.schema import Config

CHUNK = 1 << 20


class StorageError(ValueError):
    """A store that cannot be used as configured (no such bucket, no credentials, read-only); names the URI."""


@dataclass(frozen=True)
class Store:
    """A file or directory: ``path`` in ``fs`` (``bucket/prefix`` in an object store, an absolute local path),
    shown as ``uri``. Picklable: workers get the filesystem with its credentials, never through the config."""

    fs: pafs.FileSystem
    path: str
    uri: str

    def __truediv__(self, name: str) -> Store:
        return Store(self.fs, f"{self.path.rstrip('/')}/{name}", f"{self.uri.rstrip('/')}/{name}")

    def __str__(self) -> str:
        return self.uri

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def _type(self) -> pafs.FileType:
        return self.fs.get_file_info(self.path).type

    def is_file(self) -> bool:
        return self._type() == pafs.FileType.File

    def is_dir(self) -> bool:
        return self._type() == pafs.FileType.Directory

    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as f:
            return f.read()

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def write_bytes(self, data: bytes) -> None:
        """Replace the file with ``data`` so that a reader sees the old file or the new one whole: on disk a temporary
        file renamed over it (a killed writer leaves the temporary file), in an object store one upload."""
        if self.is_local:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            tmp = f"{self.path}.{os.getpid()}.tmp"
            Path(tmp).write_bytes(data)
            os.replace(tmp, self.path)
        else:
            with self.fs.open_output_stream(self.path) as f:
                f.write(data)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())

    def write_parquet(self, table: pa.Table, **options) -> bytes:
        """Write ``table`` as one Parquet file (atomically, as :meth:`write_bytes`); returns the file's bytes."""
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, **options)
        data = sink.getvalue().to_pybytes()
        self.write_bytes(data)
        return data

    def read_table(self, columns: list[str] | None = None, use_threads: bool = True) -> pa.Table:
        return pq.read_table(self.path, columns=columns, filesystem=self.fs, use_threads=use_threads)

    def parquet_file(self) -> pq.ParquetFile:
        """The Parquet file opened for random access: row groups and columns are read as byte ranges."""
        return pq.ParquetFile(self.fs.open_input_file(self.path))

    def sha256(self) -> str:
        h = hashlib.sha256()
        with self.fs.open_input_stream(self.path) as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
        return h.hexdigest()

    def delete(self) -> None:
        """Delete the file, if there is one."""
        if self.is_file():
            self.fs.delete_file(self.path)

    def delete_dir(self) -> None:
        """Delete the directory and everything under it, if there is one."""
        if self.is_dir():
            self.fs.delete_dir(self.path)

    def files(self) -> dict[str, int]:
        """Every file under the directory, by path relative to it, with its size ({} when there is no directory)."""
        base = self.path.rstrip("/") + "/"
        # allow_not_found: an object store may report a directory marker whose listing is already gone
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=True, allow_not_found=True))
        return {i.path[len(base) :]: i.size for i in infos if i.type == pafs.FileType.File}

    def push(self, local: Path, only: str | None = None) -> int:
        """Copy the files under ``local`` (or the one file ``only`` names there) into this directory where the store
        lacks them or holds another size; a no-op when the store is that directory. Returns how many were copied."""
        if self.is_local and Path(self.path).resolve() == local.resolve() or not local.is_dir():
            return 0
        held, copied = self.files(), 0
        files = [local / only] if only else sorted(p for p in local.rglob("*") if p.is_file())
        for file in (f for f in files if f.is_file() and not f.name.endswith(".tmp")):
            rel = file.relative_to(local).as_posix()
            if held.get(rel) != file.stat().st_size:
                pafs.copy_files(
                    str(file),
                    (self / rel).path,
                    source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=self.fs,
                )
                copied += 1
        return copied

    def pull(self, local: Path, skip: tuple[str, ...] = ()) -> Path:
        """``local``, holding every file of this directory (those it lacks, or holds at another size, are copied),
        but those under the subdirectories ``skip`` names."""
        if self.is_local and Path(self.path).resolve() == local.resolve():
            return local
        for rel, size in self.files().items():
            target = local / rel
            if rel.split("/", 1)[0] in skip or target.is_file() and target.stat().st_size == size:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with self.fs.open_input_stream((self / rel).path) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, CHUNK)
        return local


def _filesystem(uri: str, options: StorageConfig) -> tuple[pafs.FileSystem, str]:
    scheme = urlparse(uri).scheme
    if scheme == "s3" and any((options.endpoint_url, options.region, options.access_key_id)):
        parsed = urlparse(uri)
        kwargs = {"endpoint_override": options.endpoint_url, "region": options.region}
        if options.access_key_id is not None:
            kwargs |= {
                "access_key": options.access_key_id.get_secret_value(),
                "secret_key": options.secret_access_key.get_secret_value(),
            }
        return pafs.S3FileSystem(
            **{k: v for k, v in kwargs.items() if v is not None}
        ), f"{parsed.netloc}{parsed.path}".rstrip("/")
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise StorageError(f"{uri}: pyarrow.fs cannot open it ({exc})") from None


def at(location: str | Path | Store, options: StorageConfig | None = None) -> Store:
    """The store at a local path or a URI (``s3://bucket/prefix``, ``gs://...``); ``options``: endpoint, region and
    credentials from the config (null fields: the standard environment, ``AWS_*`` and ``AWS_ENDPOINT_URL``)."""
    if isinstance(location, Store):
        return location
    location = str(location)
    if not is_uri(location):
        path = str(Path(location).resolve())
        return Store(pafs.LocalFileSystem(), path, path)
    try:
        check_location(location)
    except ValueError as exc:
        raise StorageError(str(exc)) from None
    fs, path = _filesystem(location, options or StorageConfig())
    return Store(fs, path, location.rstrip("/"))


def output_store(cfg: Config) -> Store:
    return at(cfg.output_dir, cfg.storage)


def job_store(cfg: Config, job: str) -> Store:
    """Where ``job``'s outputs end up: ``<output_dir>/<job>``."""
    return output_store(cfg) / job


def ray_storage(cfg: Config) -> Store:
    """Ray Train's checkpoints and results: ``ray.storage_path``, else ``<output_dir>/ray``."""
    return at(cfg.ray.storage_path, cfg.storage) if cfg.ray.storage_path else output_store(cfg) / "ray"


def ray_run_storage(cfg: Config) -> dict:
    """``RunConfig`` arguments that put Ray Train's checkpoints and results in :func:`ray_storage`."""
    store = ray_storage(cfg)
    return {"storage_path": store.path, "storage_filesystem": None if store.is_local else store.fs}


def check_writable(store: Store, options: StorageConfig | None = None) -> None:
    """Fail before any work, naming the URI, when ``store`` is an object store that cannot be written: its bucket
    does not exist, the credentials are missing or refused, or they may read but not write the prefix."""
    if store.is_local:
        return
    bucket = store.path.split("/", 1)[0]
    probe = store / f".write-check-{os.getpid()}"
    try:
        if store.fs.get_file_info(bucket).type == pafs.FileType.NotFound:
            raise StorageError(f"{store.uri}: the bucket '{bucket}' does not exist (create it first)")
        probe.write_bytes(b"")
        store.fs.delete_file(probe.path)
    except OSError as exc:
        if "ACCESS_DENIED" not in str(exc) and "403" not in str(exc):
            raise StorageError(f"{store.uri}: cannot be reached ({exc})") from None
        if not (options and options.access_key_id) and not _credentials_configured():
            raise StorageError(
                f"{store.uri}: access denied and no credentials found: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or storage.access_key_id and storage.secret_access_key"
            ) from None
        raise StorageError(
            f"{store.uri}: these credentials may not write here (read-only, or no access to the "
            "bucket); output_dir and ray.storage_path must be writable"
        ) from None


def _credentials_configured() -> bool:
    names = (
        "AWS_ACCESS_KEY_ID",
        "AWS_PROFILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "GOOGLE_APPLICATION_CREDENTIALS",
    )
    return any(os.environ.get(n) for n in names) or (Path.home() / ".aws" / "credentials").is_file()
