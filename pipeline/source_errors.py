"""What a source reader reports: the row formats and file kinds it reads, the reason code of every bad row, the
error that names file, row and field, and the report of a whole read."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

ChatRenderer = Callable[[list[dict[str, str]]], str]


FORMATS: Final[tuple[str, ...]] = ("paired", "scored", "ground_truth", "conversational")


SOURCE_KINDS: Final[tuple[str, ...]] = ("jsonl", "jsonl.gz", "parquet", "hf")


ON_BAD_ROW: Final[tuple[str, ...]] = ("error", "skip")


MAX_EXAMPLES: Final[int] = 5


BATCH_ROWS: Final[int] = 1024


# Reason codes for bad rows (keys of SourceReport.skipped).
MALFORMED_JSON: Final = "malformed_json"  # line is not valid JSON


INVALID_UTF8: Final = "invalid_utf8"  # undecodable bytes, or an unpaired \uD800-style escape


NOT_AN_OBJECT: Final = "not_an_object"  # valid JSON but not an object


UNKNOWN_FORMAT: Final = "unknown_format"  # keys match no row format (auto detection)


MISSING_FIELD: Final = "missing_field"


WRONG_TYPE: Final = "wrong_type"


EMPTY_PROMPT: Final = "empty_prompt"


EMPTY_RESPONSE: Final = "empty_response"


TOO_FEW_RESPONSES: Final = "too_few_responses"  # K < 2 outside ground truth


BAD_SCORE: Final = "bad_score"  # NaN, inf, null or non-numeric score


LENGTH_MISMATCH: Final = "length_mismatch"  # len(scores) != len(responses)


DUPLICATE_ID: Final = "duplicate_id"


TOO_LONG: Final = "too_long"  # len(prompt) + longest response > max_chars


PREFIX_MISMATCH: Final = "prefix_mismatch"  # conversational chosen/rejected differ before the answer


RENDER_FAILED: Final = "render_failed"  # chat_template_renderer raised or returned a non-string


REASONS: Final[tuple[str, ...]] = (
    MALFORMED_JSON,
    INVALID_UTF8,
    NOT_AN_OBJECT,
    UNKNOWN_FORMAT,
    MISSING_FIELD,
    WRONG_TYPE,
    EMPTY_PROMPT,
    EMPTY_RESPONSE,
    TOO_FEW_RESPONSES,
    BAD_SCORE,
    LENGTH_MISMATCH,
    DUPLICATE_ID,
    TOO_LONG,
    PREFIX_MISMATCH,
    RENDER_FAILED,
)


# Pseudo-field for problems of a whole JSONL line (no field exists yet).
LINE_FIELD: Final = "<line>"


class SourceError(ValueError):
    """A source cannot be read, or (with ``on_bad_row="error"``) one of its rows is bad."""

    def __init__(
        self,
        message: str,
        *,
        path: str,
        row: int | None = None,
        field: str | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.path = path
        self.row = row
        self.field = field
        self.reason = reason

    def __reduce__(self):
        # Raised on Ray workers and re-raised in the driver: it must survive pickling with its fields.
        return _source_error, (str(self), self.path, self.row, self.field, self.reason)


def _source_error(message: str, path: str, row: int | None, field: str | None, reason: str | None) -> SourceError:
    return SourceError(message, path=path, row=row, field=field, reason=reason)


@dataclass
class SourceReport:
    """What happened while reading one source; ``to_dict()`` is JSON-ready."""

    path: str
    format: str
    kind: str = ""
    split: str | None = None
    rows_read: int = 0
    rows_out: int = 0
    filtered: int = 0  # rows of other splits (only when `split` is given)
    skipped: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class BadRow(Exception):
    def __init__(self, reason: str, field: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.field = field
        self.detail = detail


def bad_row_message(path: str | Path, number: int, bad: BadRow) -> str:
    return f"{path} row {number}, field {bad.field!r}: {bad.detail}"


def bad_row_error(path: str | Path, number: int, bad: BadRow) -> SourceError:
    return SourceError(
        bad_row_message(path, number, bad), path=str(path), row=number, field=bad.field, reason=bad.reason
    )


def duplicate_id(rid: str) -> BadRow:
    return BadRow(DUPLICATE_ID, "id", f"duplicate id {rid!r}")
