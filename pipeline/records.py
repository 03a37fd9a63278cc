"""The canonical group record: one prompt with its K responses, as Arrow.

Every stage of the prepare job reads and writes tables whose *first* columns
are exactly :data:`BASE_SCHEMA`; stages append their own columns (token ids,
embeddings, ``deviation``/``log_weight``, ``rank``, ``group_id``, similarity
rows, ``ref_logps``) after those.  The schema version lives in the Arrow schema
metadata so that a shard written by an older layout is refused loudly instead
of being misread.

Value rules enforced by :func:`validate_records`:

* ``id`` is unique within a table; ``prompt`` and ``source`` are non-null;
  ``row`` is the 1-based row/line number in ``source``.
* ``responses`` and ``origins`` have the same length K, with no null items;
  every origin is one of :data:`ORIGINS`.
* K >= 2, except a lone ground-truth response (K = 1, origin
  ``ground_truth``): the negatives stage adds the other responses later.
* ``scores`` is either null for the whole group (the source has none) or has
  K finite values.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "BASE_FIELD_NAMES",
    "BASE_SCHEMA",
    "ORIGINS",
    "SCHEMA_VERSION",
    "SCHEMA_VERSION_KEY",
    "RecordError",
    "SchemaError",
    "SchemaVersionError",
    "check_base_fields",
    "check_schema_version",
    "extend_schema",
    "schema_version",
    "validate_records",
    "with_version",
]

SCHEMA_VERSION: Final[int] = 1
SCHEMA_VERSION_KEY: Final[bytes] = b"records.schema_version"

# Tuple, not set: the order is stable for docs, error messages and tests.
ORIGINS: Final[tuple[str, ...]] = (
    "dataset",
    "chosen",
    "rejected",
    "ground_truth",
    "autoregressive",
    "meanfield",
    "truncation",
    "batch",
)

_METADATA: Final[dict[bytes, bytes]] = {SCHEMA_VERSION_KEY: str(SCHEMA_VERSION).encode()}

BASE_SCHEMA: Final[pa.Schema] = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("responses", pa.list_(pa.string()), nullable=False),
        pa.field("origins", pa.list_(pa.string()), nullable=False),
        # Nullable as a whole: null means "this source has no scores".
        pa.field("scores", pa.list_(pa.float64()), nullable=True),
        pa.field("source", pa.string(), nullable=False),
        pa.field("row", pa.int64(), nullable=False),
    ],
    metadata=_METADATA,
)

BASE_FIELD_NAMES: Final[tuple[str, ...]] = tuple(BASE_SCHEMA.names)


class SchemaError(ValueError):
    """A table's columns do not match the record contract."""


class SchemaVersionError(SchemaError):
    """A table carries no schema version, or one this code cannot read."""


class RecordError(ValueError):
    """A table has the right columns but a value breaks the record contract."""


def _normalize_type(t: pa.DataType) -> pa.DataType:
    # Parquet writers name list items "element", Arrow names them "item"; the
    # name carries no meaning, so compare item types only.
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return pa.list_(_normalize_type(t.value_type))
    return t


def _same_type(actual: pa.DataType, expected: pa.DataType) -> bool:
    if pa.types.is_large_list(actual) and pa.types.is_list(expected):
        return False
    return _normalize_type(actual) == _normalize_type(expected)


def check_base_fields(schema: pa.Schema) -> None:
    """Raise :class:`SchemaError` unless every base field is present with its exact type.

    No casting happens here: this is the cheap check for a stage that received
    a table from another stage.  Extra columns are allowed anywhere.
    """
    problems: list[str] = []
    for field in BASE_SCHEMA:
        idx = schema.get_field_index(field.name)
        if idx < 0:
            if field.name in schema.names:
                problems.append(f"column {field.name!r} appears more than once")
            else:
                problems.append(f"missing column {field.name!r}")
            continue
        actual = schema.field(idx).type
        if not _same_type(actual, field.type):
            problems.append(f"column {field.name!r} has type {actual}, expected {field.type}")
    if problems:
        raise SchemaError("records schema mismatch: " + "; ".join(problems))


def schema_version(schema_or_table: pa.Schema | pa.Table) -> int | None:
    """The schema version stored in the metadata, or None when there is none."""
    schema = schema_or_table.schema if isinstance(schema_or_table, pa.Table) else schema_or_table
    raw = (schema.metadata or {}).get(SCHEMA_VERSION_KEY)
    if raw is None:
        return None
    try:
        return int(raw.decode())
    except (UnicodeDecodeError, ValueError):
        raise SchemaVersionError(
            f"schema metadata {SCHEMA_VERSION_KEY.decode()!r} is not an integer: {raw!r}"
        ) from None


def check_schema_version(schema_or_table: pa.Schema | pa.Table, expected: int = SCHEMA_VERSION) -> int:
    """Return the stored schema version; raise :class:`SchemaVersionError` unless it is ``expected``."""
    version = schema_version(schema_or_table)
    key = SCHEMA_VERSION_KEY.decode()
    if version is None:
        raise SchemaVersionError(
            f"records schema has no version (metadata key {key!r} is missing); "
            f"expected version {expected}. Was this table written by pipeline.records?"
        )
    if version != expected:
        raise SchemaVersionError(
            f"records schema version {version} is not supported; this code reads version "
            f"{expected}. Re-run the prepare job to rebuild the shards."
        )
    return version


def with_version(schema_or_table: pa.Schema | pa.Table) -> pa.Schema | pa.Table:
    """Attach the current schema version, keeping any other metadata.

    Stages that rebuild tables (e.g. Ray Data batch transforms) can lose schema
    metadata; call this before writing a shard.
    """
    schema = schema_or_table.schema if isinstance(schema_or_table, pa.Table) else schema_or_table
    metadata = dict(schema.metadata or {})
    metadata.update(_METADATA)
    if isinstance(schema_or_table, pa.Table):
        return schema_or_table.replace_schema_metadata(metadata)
    return schema.with_metadata(metadata)


def extend_schema(fields: Iterable[pa.Field] | Mapping[str, pa.DataType]) -> pa.Schema:
    """``BASE_SCHEMA`` followed by ``fields``, for stages that add columns."""
    extra = [pa.field(name, type_) for name, type_ in fields.items()] if isinstance(fields, Mapping) else list(fields)
    for field in extra:
        if field.name in BASE_FIELD_NAMES:
            raise SchemaError(f"column {field.name!r} is a base column and cannot be redefined")
    names = [f.name for f in extra]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SchemaError(f"duplicate extra columns: {dupes}")
    return pa.schema(list(BASE_SCHEMA) + extra, metadata=_METADATA)


def _cast_column(table: pa.Table, field: pa.Field) -> pa.ChunkedArray:
    idx = table.schema.get_field_index(field.name)
    if idx < 0:
        if field.name in table.column_names:
            raise SchemaError(f"column {field.name!r} appears more than once")
        raise SchemaError(f"missing column {field.name!r}")
    column = table.column(idx)
    if column.type == field.type:
        return column
    try:
        # safe=True: refuse lossy casts (e.g. float -> int64 row numbers).
        return column.cast(field.type, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise SchemaError(f"column {field.name!r} has type {column.type}, expected {field.type} ({exc})") from None


def _first_true(mask: pa.ChunkedArray | pa.Array) -> int:
    """Index of the first true (null counts as true) entry, or -1."""
    filled = pc.fill_null(mask, True)
    idx = pc.index(filled, True).as_py()
    return -1 if idx is None else int(idx)


def _fail(table: pa.Table, index: int, column: str, problem: str) -> RecordError:
    rid = table.column("id")[index].as_py()
    src = table.column("source")[index].as_py()
    row = table.column("row")[index].as_py()
    return RecordError(f"record {index} (id {rid!r}, {src} row {row}), column {column!r}: {problem}")


def _check_values(table: pa.Table) -> None:
    n = table.num_rows
    if n == 0:
        return
    for name in ("id", "source", "row", "prompt", "responses", "origins"):
        col = table.column(name)
        if col.null_count:
            i = _first_true(pc.is_null(col))
            if name in ("id", "source", "row"):
                raise RecordError(f"record {i}, column {name!r}: value is null")
            raise _fail(table, i, name, "value is null")

    i = _first_true(pc.less(table.column("row"), 1))
    if i >= 0:
        raise _fail(table, i, "row", "row numbers are 1-based")

    responses = table.column("responses")
    origins = table.column("origins")
    k = pc.list_value_length(responses)
    i = _first_true(pc.not_equal(k, pc.list_value_length(origins)))
    if i >= 0:
        raise _fail(table, i, "origins", "length differs from responses")

    for name, col in (("responses", responses), ("origins", origins)):
        flat = pc.list_flatten(col)
        if flat.null_count:
            parents = pc.list_parent_indices(col)
            j = _first_true(pc.is_null(flat))
            raise _fail(table, parents[j].as_py(), name, "contains a null item")

    flat_origins = pc.list_flatten(origins)
    bad = pc.invert(pc.is_in(flat_origins, value_set=pa.array(ORIGINS, pa.string())))
    j = _first_true(bad)
    if j >= 0:
        parent = pc.list_parent_indices(origins)[j].as_py()
        raise _fail(table, parent, "origins", f"unknown origin {flat_origins[j].as_py()!r}; allowed: {list(ORIGINS)}")

    i = _first_true(pc.equal(k, 0))
    if i >= 0:
        raise _fail(table, i, "responses", "group has no responses")
    # K = 1 is legal only for a lone ground truth awaiting its negatives.
    single = pc.equal(k, 1)
    if pc.any(single).as_py():
        idx = pc.indices_nonzero(pc.fill_null(single, False))
        lone = pc.list_element(pc.take(origins, idx), 0)
        bad_lone = pc.not_equal(lone, "ground_truth")
        j = _first_true(bad_lone)
        if j >= 0:
            raise _fail(
                table,
                idx[j].as_py(),
                "responses",
                "a group needs at least 2 responses (only a lone ground_truth may have 1)",
            )

    scores = table.column("scores")
    if scores.null_count < n:
        present = pc.is_valid(scores)
        mismatch = pc.and_(present, pc.not_equal(pc.list_value_length(scores), k))
        i = _first_true(pc.fill_null(mismatch, False))
        if i >= 0:
            raise _fail(table, i, "scores", "length differs from responses")
        flat = pc.list_flatten(scores)
        not_finite = pc.invert(pc.fill_null(pc.is_finite(flat), False))
        j = _first_true(not_finite)
        if j >= 0:
            parent = pc.list_parent_indices(scores)[j].as_py()
            raise _fail(table, parent, "scores", f"score {flat[j].as_py()!r} is not a finite number")

    ids = table.column("id")
    if pc.count_distinct(ids).as_py() != n:
        counts = pc.value_counts(ids)
        dup = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))[0].as_py()
        raise RecordError(f"column 'id': duplicate id {dup!r}")


def validate_records(table: pa.Table, *, check_values: bool = True) -> pa.Table:
    """Cast ``table`` to the record contract and check it.

    Base columns are cast to their canonical types (safe casts only, e.g.
    ``large_string`` -> ``string``, ``int32`` -> ``int64``) and moved to the
    front in :data:`BASE_SCHEMA` order; extra columns follow, unchanged and in
    their original order.  The result carries the current schema version.
    Raises :class:`SchemaError` for missing/uncastable columns and
    :class:`RecordError` for values that break the contract.
    """
    base_columns = [_cast_column(table, field) for field in BASE_SCHEMA]
    extra = [(field, table.column(i)) for i, field in enumerate(table.schema) if field.name not in BASE_FIELD_NAMES]
    metadata = dict(table.schema.metadata or {})
    metadata.update(_METADATA)
    schema = pa.schema(list(BASE_SCHEMA) + [f for f, _ in extra], metadata=metadata)
    extra_columns = [c for _, c in extra]
    out = pa.Table.from_arrays(base_columns + extra_columns, schema=schema)
    if check_values:
        _check_values(out)
    return out
