"""Source files row by row: JSONL (plain or gzip) with line numbers, Parquet and Hugging Face ``save_to_disk``
directories, and the detection of a file's row format."""

from __future__ import annotations

import gzip
import json
import math
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.source_errors import (
    BATCH_ROWS,
    INVALID_UTF8,
    LINE_FIELD,
    MALFORMED_JSON,
    BadRow,
    SourceError,
)
from pipeline.source_rows import before_format, detect_format


def source_kind(path: str | Path) -> str:
    """One of :data:`SOURCE_KINDS` for ``path``; :class:`SourceError` for anything else."""
    p = Path(path)
    name = p.name.lower()
    if p.is_dir():
        if (p / "dataset_dict.json").is_file() or (p / "state.json").is_file():
            return "hf"
        raise SourceError(
            f"{p}: directory is not a Hugging Face dataset saved with save_to_disk "
            "(no dataset_dict.json or state.json)",
            path=str(p),
        )
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such source file or directory")
    for kind in ("jsonl.gz", "jsonl", "parquet"):
        if name.endswith("." + kind):
            return kind
    raise SourceError(
        f"{p}: unsupported source; expected a .jsonl, .jsonl.gz or .parquet file, "
        "or a directory written by datasets' save_to_disk",
        path=str(p),
    )


def source_stem(p: Path, kind: str) -> str:
    if kind == "hf":
        return p.name
    return p.name[: -len(kind) - 1]


def decode_line(number: int, raw: bytes) -> Any:
    """One JSONL line as a JSON value, or the :class:`BadRow` it is (bytes, not text: one bad byte costs one row)."""
    if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return BadRow(INVALID_UTF8, LINE_FIELD, f"invalid UTF-8 at byte {exc.start}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        return BadRow(MALFORMED_JSON, LINE_FIELD, f"malformed JSON: {exc.msg} at column {exc.colno}")
    except RecursionError:
        return BadRow(MALFORMED_JSON, LINE_FIELD, "malformed JSON: nested too deeply")


def iter_jsonl_lines(p: Path, kind: str) -> Iterator[tuple[int, bytes]]:
    """``(line number, raw line)`` of every non-blank line (blank lines still count, so numbers match an editor)."""
    opener = gzip.open if kind == "jsonl.gz" else open
    try:
        with opener(p, "rb") as fh:
            for number, raw in enumerate(fh, 1):
                if raw.strip():
                    yield number, raw
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise SourceError(f"{p}: cannot read gzip data ({exc})", path=str(p)) from None


def _iter_jsonl(p: Path, kind: str) -> Iterator[tuple[int, Any]]:
    for number, raw in iter_jsonl_lines(p, kind):
        yield number, decode_line(number, raw)


def _iter_parquet(p: Path) -> Iterator[tuple[int, Any]]:
    try:
        pf = pq.ParquetFile(p)
    except (pa.ArrowInvalid, OSError) as exc:
        raise SourceError(f"{p}: not a readable Parquet file ({exc})", path=str(p)) from None
    number = 0
    for batch in pf.iter_batches(batch_size=BATCH_ROWS):
        for obj in batch.to_pylist():
            number += 1
            yield number, obj


def open_hf(p: Path, hf_split: str) -> tuple[Any, str]:
    import datasets  # heavy import; only HF sources need it

    try:
        loaded = datasets.load_from_disk(str(p))
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise SourceError(f"{p}: cannot load Hugging Face dataset ({exc})", path=str(p)) from None
    if isinstance(loaded, datasets.DatasetDict):
        if hf_split not in loaded:
            raise SourceError(
                f"{p}: split {hf_split!r} not in the DatasetDict (available: {sorted(loaded)})",
                path=str(p),
            )
        # The split is part of the stem so auto ids stay unique across splits.
        return loaded[hf_split], f"{p.name}/{hf_split}"
    if not isinstance(loaded, datasets.Dataset):
        raise SourceError(f"{p}: unsupported dataset type {type(loaded).__name__}", path=str(p))
    return loaded, p.name


def _iter_hf(dataset: Any) -> Iterator[tuple[int, Any]]:
    number = 0
    for batch in dataset.with_format("arrow").iter(batch_size=BATCH_ROWS):
        for obj in batch.to_pylist():
            number += 1
            yield number, obj


def open_rows(path: str | Path, hf_split: str = "train") -> tuple[str, str, Iterator[tuple[int, Any]]]:
    """``(kind, stem, rows)``: the source's kind, the stem of its automatic ids, and its ``(row number, value)``s."""
    p = Path(path)
    kind = source_kind(p)
    if kind == "hf":
        dataset, stem = open_hf(p, hf_split)
        return kind, stem, _iter_hf(dataset)
    if kind == "parquet":
        return kind, source_stem(p, kind), _iter_parquet(p)
    return kind, source_stem(p, kind), _iter_jsonl(p, kind)


def detect_source_format(path: str | Path, *, format: str, split: str | None, hf_split: str) -> tuple[str | None, int]:
    """``(format, row)``: the format and the number of the first row that fixes it, as :func:`read_source` finds
    them (rows before it that pass the checks every row gets match no format); ``(None, inf)`` when no row does."""
    if format != "auto":
        return format, 0
    _, _, rows = open_rows(path, hf_split)
    for number, item in rows:
        try:
            if not before_format(item, split):
                continue
        except BadRow:
            continue
        fmt = detect_format(item)
        if fmt is not None:
            return fmt, number
    return None, math.inf
