"""Sources as a Ray Data dataset: read in parallel by read tasks, checked row by row in a map stage.

Pieces (a JSONL file, a Parquet row group, one Arrow file of a ``save_to_disk`` dataset) are read by one Ray Data
read task each, with every row's number (JSONL: its line). A map stage applies :mod:`pipeline.sources`' checks
(its reason codes and messages): a bad row stops the job (``on_bad_row: error``: file, row and field) or flows on
with its ``skip_reason`` for the report (the training side's under ``data.test_fraction``: a bad row may have no
prompt to hash); no row reaches the driver. Duplicate ids need every row: the prepare graph finds them afterwards.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import ray
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask
from transformers import AutoTokenizer

from configs.data import TaskConfig
from configs.schema import Config
from pipeline import task
from pipeline.source_errors import BATCH_ROWS
from pipeline.source_files import decode_line, detect_source_format, iter_jsonl_lines, open_hf, source_stem
from pipeline.sources import BadRow, SourceError, bad_row_error, bad_row_message, check_row, source_kind
from pipeline.tokenize import chat_renderer, user_prompt

ROW, LINE = "__row", "__line"
# Checked rows: the base record columns, plus why a row is left out ("" for a good row) and the message that says so.
CHECKED_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("prompt", pa.string()),
        ("responses", pa.list_(pa.string())),
        ("origins", pa.list_(pa.string())),
        ("scores", pa.list_(pa.float64())),
        ("source", pa.string()),
        ("row", pa.int64()),
        ("skip_reason", pa.string()),
        ("skip_message", pa.string()),
    ]
)
OTHER_SPLIT = "other_split"


@dataclass(frozen=True)
class Piece:
    """What one read task reads: a JSONL file, one row group of a Parquet file, or one Arrow file of an HF dataset."""

    path: str
    kind: str
    first_row: int = 1
    row_group: int | None = None
    rows: int | None = None


@dataclass(frozen=True)
class SourceSpec:
    """Everything a worker needs to check one source's rows."""

    path: str
    name: str  # the ``source`` column: the file (or dataset directory) name
    stem: str  # automatic ids are "{stem}:{row}"
    kind: str
    format: str | None
    detect_row: float  # rows before this one precede the first row of a known format
    split: str | None
    max_chars: int | None
    on_bad_row: str
    model_dir: str
    chat_template: str
    test_fraction: float = 0.0  # data.test_fraction, data.rows == "test" and the seed: which prompts this read keeps
    test_rows: bool = False
    seed: int = 0


def is_test_prompt(prompt: str, seed: int, fraction: float) -> bool:
    """Whether ``prompt`` is a test row at ``data.test_fraction``: a hash of the seed and the prompt text, so the side
    depends on neither the row's position nor the grouping, and a repeated prompt is never on both sides."""
    digest = hashlib.blake2b(f"{seed}\0{prompt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < fraction * 2**64


def source_pieces(path: str | Path, hf_split: str) -> tuple[str, str, list[Piece]]:
    """``(kind, stem, pieces)`` of a source; unreadable files are a :class:`SourceError` here, before any work."""
    p = Path(path)
    kind = source_kind(p)
    if kind in ("jsonl", "jsonl.gz"):
        return kind, source_stem(p, kind), [Piece(str(p), kind)]
    if kind == "parquet":
        try:
            meta = pq.ParquetFile(p).metadata
        except (pa.ArrowInvalid, OSError) as exc:
            raise SourceError(f"{p}: not a readable Parquet file ({exc})", path=str(p)) from None
        pieces, first = [], 1
        for g in range(meta.num_row_groups):
            n = meta.row_group(g).num_rows
            pieces.append(Piece(str(p), kind, first, g, n))
            first += n
        return kind, source_stem(p, kind), pieces
    dataset, stem = open_hf(p, hf_split)
    if dataset._indices is not None:
        raise SourceError(f"{p}: dataset has an indices mapping; save it with flatten_indices() first", path=str(p))
    pieces, first = [], 1
    for entry in dataset.cache_files:
        with pa.memory_map(entry["filename"]) as source:
            n = pa.ipc.open_stream(source).read_all().num_rows
        pieces.append(Piece(entry["filename"], "arrow", first, None, n))
        first += n
    return kind, stem, pieces


def read_piece(piece: Piece, max_row: int | None):
    def numbered(batch: pa.RecordBatch, first: int) -> pa.Table:
        table = pa.Table.from_batches([batch])
        return table.append_column(ROW, pa.array(range(first, first + batch.num_rows), pa.int64()))

    if piece.kind in ("jsonl", "jsonl.gz"):
        numbers, lines = [], []
        for number, raw in iter_jsonl_lines(Path(piece.path), piece.kind):
            if max_row is not None and number > max_row:
                break
            numbers.append(number)
            lines.append(raw)
            if len(lines) == BATCH_ROWS:
                yield pa.table({ROW: pa.array(numbers, pa.int64()), LINE: pa.array(lines, pa.binary())})
                numbers, lines = [], []
        if lines:
            yield pa.table({ROW: pa.array(numbers, pa.int64()), LINE: pa.array(lines, pa.binary())})
        return
    if piece.kind == "parquet":
        batches = pq.ParquetFile(piece.path).iter_batches(batch_size=BATCH_ROWS, row_groups=[piece.row_group])
    else:
        batches = pa.ipc.open_stream(pa.memory_map(piece.path)).read_all().to_batches(max_chunksize=BATCH_ROWS)
    first = piece.first_row
    for batch in batches:
        if max_row is not None and first > max_row:
            return
        if max_row is not None:
            batch = batch.slice(0, max_row - first + 1)
        yield numbered(batch, first)
        first += batch.num_rows


class SourceDatasource(Datasource):
    """A source's pieces, one Ray Data read task each (rows numbered as :mod:`pipeline.sources` numbers them)."""

    def __init__(self, pieces: list[Piece], max_row: int | None):
        super().__init__()
        self.pieces, self.max_row = pieces, max_row

    def estimate_inmemory_data_size(self) -> int:
        return sum(Path(p.path).stat().st_size for p in self.pieces)

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context=None
    ) -> list[ReadTask]:
        return [
            ReadTask(
                partial(read_piece, piece, self.max_row),
                BlockMetadata(num_rows=piece.rows, size_bytes=None, exec_stats=None, input_files=[piece.path]),
            )
            for piece in self.pieces
        ]


@lru_cache(maxsize=4)
def _renderer(model_dir: str, setting: str):
    return chat_renderer(AutoTokenizer.from_pretrained(model_dir), setting)


def check_batch(batch: pa.Table, spec: SourceSpec) -> pa.Table:
    """Rows of a read block as checked records (every row kept; bad ones with their reason and message)."""
    render = _renderer(spec.model_dir, spec.chat_template) if spec.chat_template != "none" else None
    numbers = batch[ROW].to_pylist()
    if LINE in batch.column_names:
        items = [decode_line(n, raw) for n, raw in zip(numbers, batch[LINE].to_pylist())]
    else:
        items = batch.drop_columns([ROW]).to_pylist()
    out = {name: [] for name in CHECKED_SCHEMA.names}
    for number, item in zip(numbers, items):
        record = {
            "id": f"{spec.stem}:{number}",
            "prompt": "",
            "responses": [],
            "origins": [],
            "scores": [],
            "source": spec.name,
            "row": number,
            "skip_reason": "",
            "skip_message": "",
        }
        try:
            fmt = spec.format if number >= spec.detect_row else None
            checked = check_row(
                item, number, fmt=fmt, split=spec.split, max_chars=spec.max_chars, renderer=render, stem=spec.stem
            )
            if checked is None or (
                spec.test_fraction
                and is_test_prompt(checked[2].prompt, spec.seed, spec.test_fraction) != spec.test_rows
            ):
                record["skip_reason"] = OTHER_SPLIT
            else:
                rid, _, group = checked
                record.update(
                    id=rid,
                    prompt=group.prompt,
                    responses=group.responses,
                    origins=group.origins,
                    scores=group.scores or [],
                )
        except BadRow as bad:
            if spec.on_bad_row == "error":
                raise bad_row_error(spec.path, number, bad) from None
            reported = not spec.test_rows  # the training side reports a bad row (see the module docstring)
            record.update(skip_reason=f"source:{bad.reason}" if reported else OTHER_SPLIT)
            record.update(skip_message=bad_row_message(spec.path, number, bad) if reported else "")
        for name, value in record.items():
            out[name].append(value)
    return pa.table(out, schema=CHECKED_SCHEMA)


def source_spec(cfg: Config, model_dir: str) -> tuple[SourceSpec, list[Piece]]:
    """The checks and pieces of ``data.source``; its format is found first, as :func:`read_source` finds it."""
    d = cfg.data
    kind, stem, pieces = source_pieces(d.source, d.hf_split)
    fmt, detect_row = detect_source_format(d.source, format=d.format, split=d.split, hf_split=d.hf_split)
    spec = SourceSpec(
        path=str(Path(d.source)),
        name=Path(d.source).name,
        stem=stem,
        kind=kind,
        format=fmt,
        detect_row=detect_row,
        split=d.split,
        max_chars=d.max_chars,
        on_bad_row=d.on_bad_row,
        model_dir=model_dir,
        chat_template=d.chat_template,
        test_fraction=d.test_fraction,
        test_rows=d.rows == "test",
        seed=cfg.seed,
    )
    return spec, pieces


def read_checked(cfg: Config, model_dir: str) -> tuple[ray.data.Dataset, SourceSpec | None]:
    """Checked records of the configured source (``data.source``, else the embedded task's train split)."""
    if not cfg.data.source:
        n = cfg.task.n_train if cfg.prepare.max_rows is None else min(cfg.task.n_train, cfg.prepare.max_rows)
        return ray.data.range(n).map_batches(
            task_rows,
            fn_kwargs={
                "seed": cfg.seed,
                "spec": cfg.task.model_dump_json(),
                "model_dir": model_dir,
                "chat_template": cfg.data.chat_template,
            },
            batch_format="pyarrow",
        ), None
    spec, pieces = source_spec(cfg, model_dir)
    ds = ray.data.read_datasource(SourceDatasource(pieces, cfg.prepare.max_rows))
    return ds.map_batches(check_batch, fn_kwargs={"spec": spec}, batch_format="pyarrow"), spec


@lru_cache(maxsize=2)
def _task_train(seed: int, spec_json: str) -> list[dict]:
    return task.splits(seed, TaskConfig.model_validate_json(spec_json))[0]


def task_rows(batch: pa.Table, seed: int, spec: str, model_dir: str, chat_template: str) -> pa.Table:
    train = _task_train(seed, spec)
    render = _renderer(model_dir, chat_template) if chat_template != "none" else None
    rows = [train[i] for i in batch["id"].to_pylist()]
    n = len(rows)
    return pa.table(
        {
            "id": [r["id"] for r in rows],
            "prompt": [user_prompt(r["prompt"], render)[0] for r in rows],
            "responses": [[r["response"]] for r in rows],
            "origins": [["ground_truth"]] * n,
            "scores": [[]] * n,
            "source": ["embedded-task"] * n,
            "row": [i + 1 for i in batch["id"].to_pylist()],
            "skip_reason": [""] * n,
            "skip_message": [""] * n,
        },
        schema=CHECKED_SCHEMA,
    )


def templated(cfg: Config, spec: SourceSpec | None, model_dir: str) -> bool:
    """Whether prompts were rendered by a chat template (see :func:`pipeline.tokenize.encode_prompt`)."""
    if cfg.data.chat_template == "none" or _renderer(model_dir, cfg.data.chat_template) is None:
        return False
    return spec is None or spec.format == "conversational"
