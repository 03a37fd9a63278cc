"""Source readers: JSONL(.gz), Parquet and Hugging Face ``save_to_disk`` dirs -> canonical records.

:func:`read_source` streams one source row by row, detects (or is told) the
row format, validates every row and returns a table in the
:mod:`pipeline.records` contract plus a :class:`SourceReport`.

Row formats
-----------
``paired``
    ``prompt``, ``chosen``, ``rejected`` (strings), optional ``score_chosen`` and
    ``score_rejected`` -> responses ``[chosen, rejected]``, origins
    ``["chosen", "rejected"]``.  Scores are kept when both are given, null when
    neither is; only one of the two is a bad row (``missing_field``), because a
    half-scored pair would silently fall out of score-weighted losses.
``scored``
    ``prompt``, ``responses[]``, ``scores[]`` -> origins ``"dataset"``.  ``scores``
    may be absent (null scores).  UltraFeedback's raw shape is read too:
    ``instruction`` (or ``prompt``) with ``completions: [{response,
    overall_score, ...}]``.
``ground_truth``
    ``prompt`` with ``response`` (aliases, in this order: ``reference``,
    ``output``) -> one response with origin ``"ground_truth"`` and null scores.
    K = 1 is valid only here; the negatives stage adds the rest.
``conversational``
    ``messages: [{role, content}, ...]`` ending with the assistant's answer
    (-> ground truth), or ``chosen``/``rejected`` message lists that share every
    message before their final assistant answer (-> paired, with the same
    optional scores as ``paired``).  TRL's explicit-prompt variant, where
    ``prompt`` is itself a message list and ``chosen``/``rejected`` hold only the
    answer, is accepted too.  The prompt messages (everything before the final
    answer) are rendered by ``chat_template_renderer`` when one is given --
    typically ``lambda m: tok.apply_chat_template(m, tokenize=False,
    add_generation_prompt=True)`` -- else by :func:`plain_chat_renderer`, the
    Anthropic HH layout ``"\\n\\nHuman: ...\\n\\nAssistant: ...\\n\\nAssistant:"``.
    The answer text is stored unchanged.

With ``format="auto"`` the format is fixed by the first row whose keys match
one of the above (see :func:`detect_format`); every later row is parsed as
that format.  A row may carry an ``id`` (string or integer); otherwise the id is
``"{file stem}:{row}"``.  When ``split`` is given, only rows whose ``split``
field equals it are kept (rows of other splits are counted in
``SourceReport.filtered``, not as bad rows).

Rows are numbered from 1: the line number for JSONL (blank lines are skipped
but still counted, so numbers match an editor), the row index for Parquet and
Hugging Face datasets.
"""

from __future__ import annotations

import gzip
import json
import math
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.records import BASE_SCHEMA, validate_records

__all__ = [
    "FORMATS",
    "REASONS",
    "SOURCE_KINDS",
    "ChatRenderer",
    "SourceError",
    "SourceReport",
    "detect_format",
    "plain_chat_renderer",
    "read_source",
    "source_kind",
]

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

_GROUND_TRUTH_KEYS: Final = ("response", "reference", "output")


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


@dataclass
class _Group:
    prompt: str
    responses: list[str]
    response_fields: list[str]  # source field of each response, so too_long can name it
    origins: list[str]
    scores: list[float] | None


# --------------------------------------------------------------------------- values


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _get(row: Mapping[str, Any], key: str) -> Any:
    # A null counts as absent: Parquet and HF tables give every row every column.
    value = row.get(key)
    if value is None:
        raise BadRow(MISSING_FIELD, key, "field is missing")
    return value


def _check_unicode(value: str, name: str) -> None:
    # json.loads accepts escapes such as "\ud800" that decode to lone
    # surrogates; Arrow cannot store them, so catch them per row here.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BadRow(
            INVALID_UTF8, name, f"text is not valid Unicode (unpaired surrogate at character {exc.start})"
        ) from None


def _string(value: Any, name: str, empty_reason: str, what: str) -> str:
    if not isinstance(value, str):
        raise BadRow(WRONG_TYPE, name, f"expected a string, got {_type_name(value)}")
    if not value.strip():
        raise BadRow(empty_reason, name, f"{what} is empty")
    _check_unicode(value, name)
    return value


def _prompt_text(value: Any, name: str) -> str:
    return _string(value, name, EMPTY_PROMPT, "prompt")


def _response_text(value: Any, name: str) -> str:
    return _string(value, name, EMPTY_RESPONSE, "response")


def _list(value: Any, name: str) -> list[Any]:
    if not isinstance(value, list):
        raise BadRow(WRONG_TYPE, name, f"expected a list, got {_type_name(value)}")
    return value


def _score(value: Any, name: str) -> float:
    if value is None:
        raise BadRow(BAD_SCORE, name, "score is null")
    # bool is an int subclass, but true/false is never a meaningful score.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRow(BAD_SCORE, name, f"score is not a number (got {_type_name(value)} {value!r:.40})")
    try:
        score = float(value)
    except OverflowError:
        raise BadRow(BAD_SCORE, name, "score is too large for a float64") from None
    if math.isnan(score):
        raise BadRow(BAD_SCORE, name, "score is NaN")
    if math.isinf(score):
        raise BadRow(BAD_SCORE, name, "score is infinite")
    return score


def _pair_scores(row: Mapping[str, Any]) -> list[float] | None:
    chosen, rejected = row.get("score_chosen"), row.get("score_rejected")
    if chosen is None and rejected is None:
        return None
    if chosen is None or rejected is None:
        missing, given = ("score_chosen", "score_rejected") if chosen is None else ("score_rejected", "score_chosen")
        raise BadRow(MISSING_FIELD, missing, f"field is missing ({given} is given; scores come in pairs)")
    return [_score(chosen, "score_chosen"), _score(rejected, "score_rejected")]


# --------------------------------------------------------------------------- conversations

_ROLE_NAMES: Final[dict[str, str]] = {
    "user": "Human",
    "human": "Human",
    "assistant": "Assistant",
    "system": "System",
}


def plain_chat_renderer(messages: Sequence[Mapping[str, str]]) -> str:
    """Render prompt messages without a tokenizer, in the Anthropic HH layout.

    Each message becomes ``"\\n\\n{Role}: {content}"`` (``user`` -> ``Human``,
    ``assistant`` -> ``Assistant``, ``system`` -> ``System``, any other role
    capitalised), followed by ``"\\n\\nAssistant:"`` to cue the answer.  This is
    the layout of the HH-RLHF prompts, so plain and conversational sources
    read the same way when no chat template is available.
    """
    parts = [f"\n\n{_ROLE_NAMES.get(m['role'], m['role'].capitalize())}: {m['content']}" for m in messages]
    return "".join(parts) + "\n\nAssistant:"


def _messages(value: Any, name: str) -> list[dict[str, str]]:
    items = _list(value, name)
    if not items:
        raise BadRow(EMPTY_PROMPT if name in ("messages", "prompt") else EMPTY_RESPONSE, name, "message list is empty")
    out: list[dict[str, str]] = []
    for i, item in enumerate(items):
        where = f"{name}[{i}]"
        if not isinstance(item, Mapping):
            raise BadRow(WRONG_TYPE, where, f"expected a message object, got {_type_name(item)}")
        role, content = item.get("role"), item.get("content")
        if role is None:
            raise BadRow(MISSING_FIELD, f"{where}.role", "field is missing")
        if content is None:
            raise BadRow(MISSING_FIELD, f"{where}.content", "field is missing")
        if not isinstance(role, str) or not role:
            raise BadRow(WRONG_TYPE, f"{where}.role", f"expected a non-empty string, got {_type_name(role)}")
        if not isinstance(content, str):
            raise BadRow(WRONG_TYPE, f"{where}.content", f"expected a string, got {_type_name(content)}")
        _check_unicode(content, f"{where}.content")
        # Only role/content go to the template: other keys (tool calls, names)
        # are not part of this contract.
        out.append({"role": role, "content": content})
    return out


def _split_answer(messages: list[dict[str, str]], name: str) -> tuple[list[dict[str, str]], str, str]:
    last = len(messages) - 1
    if messages[last]["role"] != "assistant":
        raise BadRow(
            MISSING_FIELD,
            f"{name}[{last}]",
            f"last message must be the assistant's answer, got role {messages[last]['role']!r}",
        )
    where = f"{name}[{last}].content"
    return messages[:last], _response_text(messages[last]["content"], where), where


def _render(prompt_messages: list[dict[str, str]], name: str, renderer: ChatRenderer | None) -> str:
    if not prompt_messages or not any(m["content"].strip() for m in prompt_messages):
        raise BadRow(EMPTY_PROMPT, name, "no non-empty message before the assistant's answer")
    if renderer is None:
        return plain_chat_renderer(prompt_messages)
    try:
        # Copies: a template must not be able to alter the parsed row.
        text = renderer([dict(m) for m in prompt_messages])
    except Exception as exc:
        # Any template failure (roles it rejects, missing variables) is this row's problem.
        raise BadRow(RENDER_FAILED, name, f"chat_template_renderer failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(text, str):
        raise BadRow(RENDER_FAILED, name, f"chat_template_renderer returned {_type_name(text)}, not a string")
    return _prompt_text(text, name)


# --------------------------------------------------------------------------- row formats


def _parse_paired(row: Mapping[str, Any], renderer: ChatRenderer | None) -> _Group:
    prompt = _prompt_text(_get(row, "prompt"), "prompt")
    chosen = _response_text(_get(row, "chosen"), "chosen")
    rejected = _response_text(_get(row, "rejected"), "rejected")
    return _Group(prompt, [chosen, rejected], ["chosen", "rejected"], ["chosen", "rejected"], _pair_scores(row))


def _parse_scored(row: Mapping[str, Any], renderer: ChatRenderer | None) -> _Group:
    if row.get("completions") is not None:
        return _parse_ultrafeedback(row)
    prompt = _prompt_text(_get(row, "prompt"), "prompt")
    items = _list(_get(row, "responses"), "responses")
    if len(items) < 2:
        raise BadRow(TOO_FEW_RESPONSES, "responses", f"needs at least 2 responses, got {len(items)}")
    fields = [f"responses[{i}]" for i in range(len(items))]
    responses = [_response_text(v, f) for v, f in zip(items, fields, strict=True)]
    scores: list[float] | None = None
    raw_scores = row.get("scores")
    if raw_scores is not None:
        raw_scores = _list(raw_scores, "scores")
        if len(raw_scores) != len(responses):
            raise BadRow(LENGTH_MISMATCH, "scores", f"{len(raw_scores)} scores for {len(responses)} responses")
        scores = [_score(v, f"scores[{i}]") for i, v in enumerate(raw_scores)]
    return _Group(prompt, responses, fields, ["dataset"] * len(responses), scores)


def _parse_ultrafeedback(row: Mapping[str, Any]) -> _Group:
    key = "prompt" if row.get("prompt") is not None else "instruction"
    prompt = _prompt_text(_get(row, key), key)
    items = _list(row["completions"], "completions")
    if len(items) < 2:
        raise BadRow(TOO_FEW_RESPONSES, "completions", f"needs at least 2 completions, got {len(items)}")
    responses: list[str] = []
    fields: list[str] = []
    scores: list[float] = []
    for i, item in enumerate(items):
        where = f"completions[{i}]"
        if not isinstance(item, Mapping):
            raise BadRow(WRONG_TYPE, where, f"expected an object, got {_type_name(item)}")
        response_field = f"{where}.response"
        if item.get("response") is None:
            raise BadRow(MISSING_FIELD, response_field, "field is missing")
        responses.append(_response_text(item["response"], response_field))
        fields.append(response_field)
        if item.get("overall_score") is None:
            raise BadRow(MISSING_FIELD, f"{where}.overall_score", "field is missing")
        scores.append(_score(item["overall_score"], f"{where}.overall_score"))
    return _Group(prompt, responses, fields, ["dataset"] * len(responses), scores)


def _parse_ground_truth(row: Mapping[str, Any], renderer: ChatRenderer | None) -> _Group:
    prompt = _prompt_text(_get(row, "prompt"), "prompt")
    for key in _GROUND_TRUTH_KEYS:
        if row.get(key) is not None:
            response = _response_text(row[key], key)
            return _Group(prompt, [response], [key], ["ground_truth"], None)
    raise BadRow(MISSING_FIELD, "response", "field is missing (also looked for 'reference' and 'output')")


def _parse_conversational(row: Mapping[str, Any], renderer: ChatRenderer | None) -> _Group:
    if row.get("chosen") is not None or row.get("rejected") is not None:
        return _parse_conversational_pair(row, renderer)
    messages = _messages(_get(row, "messages"), "messages")
    prompt_messages, answer, where = _split_answer(messages, "messages")
    prompt = _render(prompt_messages, "messages", renderer)
    return _Group(prompt, [answer], [where], ["ground_truth"], None)


def _parse_conversational_pair(row: Mapping[str, Any], renderer: ChatRenderer | None) -> _Group:
    chosen = _messages(_get(row, "chosen"), "chosen")
    rejected = _messages(_get(row, "rejected"), "rejected")
    if isinstance(row.get("prompt"), list):
        # TRL's explicit-prompt layout: prompt messages kept apart from the answers.
        prefix = _messages(row["prompt"], "prompt")
        if chosen[: len(prefix)] != prefix:
            chosen = prefix + chosen
        if rejected[: len(prefix)] != prefix:
            rejected = prefix + rejected
    chosen_prompt, chosen_text, chosen_where = _split_answer(chosen, "chosen")
    rejected_prompt, rejected_text, rejected_where = _split_answer(rejected, "rejected")
    if chosen_prompt != rejected_prompt:
        first = next(
            (i for i, (a, b) in enumerate(zip(chosen_prompt, rejected_prompt, strict=False)) if a != b),
            min(len(chosen_prompt), len(rejected_prompt)),
        )
        raise BadRow(
            PREFIX_MISMATCH,
            f"rejected[{first}]",
            f"chosen and rejected must share every message before the final answer; they differ at message {first}",
        )
    prompt = _render(chosen_prompt, "chosen", renderer)
    return _Group(
        prompt,
        [chosen_text, rejected_text],
        [chosen_where, rejected_where],
        ["chosen", "rejected"],
        _pair_scores(row),
    )


_PARSERS: Final[dict[str, Callable[[Mapping[str, Any], ChatRenderer | None], _Group]]] = {
    "paired": _parse_paired,
    "scored": _parse_scored,
    "ground_truth": _parse_ground_truth,
    "conversational": _parse_conversational,
}


def detect_format(row: Mapping[str, Any]) -> str | None:
    """The row format suggested by a row's keys (null values ignored), or None."""
    keys = {k for k, v in row.items() if v is not None}
    if "chosen" in keys and "rejected" in keys:
        return "conversational" if isinstance(row["chosen"], list) else "paired"
    if "messages" in keys:
        return "conversational"
    if "responses" in keys or "completions" in keys:
        return "scored"
    if "prompt" in keys and keys.intersection(_GROUND_TRUTH_KEYS):
        return "ground_truth"
    return None


def _row_id(row: Mapping[str, Any], stem: str, number: int) -> str:
    value = row.get("id")
    if value is None:
        return f"{stem}:{number}"
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise BadRow(WRONG_TYPE, "id", f"expected a string or an integer, got {_type_name(value)}")
    if isinstance(value, str):
        if not value.strip():
            raise BadRow(WRONG_TYPE, "id", "id is an empty string")
        _check_unicode(value, "id")
        return value
    return str(value)


# --------------------------------------------------------------------------- file kinds


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


def _before_format(item: Any, split: str | None) -> bool:
    """Checks every row gets before its format matters; False for a row of another split."""
    if isinstance(item, BadRow):
        raise item
    if not isinstance(item, Mapping):
        raise BadRow(NOT_AN_OBJECT, LINE_FIELD, f"expected a JSON object, got {_type_name(item)}")
    if split is not None:
        row_split = _get(item, "split")
        if not isinstance(row_split, str):
            raise BadRow(WRONG_TYPE, "split", f"expected a string, got {_type_name(row_split)}")
        if row_split != split:
            return False
    return True


def check_row(
    item: Any,
    number: int,
    *,
    fmt: str | None,
    split: str | None,
    max_chars: int | None,
    renderer: ChatRenderer | None,
    stem: str,
) -> tuple[str, str, _Group] | None:
    """One source row (a decoded JSON value or a table row) as ``(id, format, record)``; None for a row of another
    split.  ``fmt=None`` detects the format from this row's keys.  Raises :class:`BadRow` for a bad row; duplicate
    ids are the caller's to find (they need every row)."""
    if not _before_format(item, split):
        return None
    if fmt is None:
        fmt = detect_format(item)
        if fmt is None:
            raise BadRow(UNKNOWN_FORMAT, LINE_FIELD, f"keys {sorted(item)} match no row format ({', '.join(FORMATS)})")
    group = _PARSERS[fmt](item, renderer)
    rid = _row_id(item, stem, number)
    if max_chars is not None:
        longest = max(range(len(group.responses)), key=lambda i: len(group.responses[i]))
        total = len(group.prompt) + len(group.responses[longest])
        if total > max_chars:
            where = "prompt" if len(group.prompt) >= len(group.responses[longest]) else group.response_fields[longest]
            raise BadRow(
                TOO_LONG, where, f"prompt + longest response is {total} characters, over max_chars={max_chars}"
            )
    return rid, fmt, group


def bad_row_message(path: str | Path, number: int, bad: BadRow) -> str:
    return f"{path} row {number}, field {bad.field!r}: {bad.detail}"


def bad_row_error(path: str | Path, number: int, bad: BadRow) -> SourceError:
    return SourceError(
        bad_row_message(path, number, bad), path=str(path), row=number, field=bad.field, reason=bad.reason
    )


def duplicate_id(rid: str) -> BadRow:
    return BadRow(DUPLICATE_ID, "id", f"duplicate id {rid!r}")


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
            if not _before_format(item, split):
                continue
        except BadRow:
            continue
        fmt = detect_format(item)
        if fmt is not None:
            return fmt, number
    return None, math.inf


# --------------------------------------------------------------------------- entry point


def read_source(
    path: str | Path,
    *,
    format: str = "auto",  # shadows the builtin: it is the name callers and configs use
    split: str | None = None,
    on_bad_row: str = "error",
    max_chars: int | None = 20000,
    hf_split: str = "train",
    chat_template_renderer: ChatRenderer | None = None,
) -> tuple[pa.Table, SourceReport]:
    """Read one source into a records table (see the module docstring for formats).

    ``on_bad_row="error"`` raises :class:`SourceError` at the first bad row,
    naming the file, row and field; ``"skip"`` drops bad rows and counts them
    in ``SourceReport.skipped`` by reason code (see :data:`REASONS`).  A source
    that yields no records at all is always a :class:`SourceError`.
    ``max_chars`` bounds ``len(prompt) + len(longest response)``; None disables it.
    """
    if on_bad_row not in ON_BAD_ROW:
        raise ValueError(f"on_bad_row must be one of {list(ON_BAD_ROW)}, got {on_bad_row!r}")
    if format != "auto" and format not in FORMATS:
        raise ValueError(f"format must be 'auto' or one of {list(FORMATS)}, got {format!r}")
    if max_chars is not None and max_chars <= 0:
        raise ValueError(f"max_chars must be positive or None, got {max_chars!r}")

    p = Path(path)
    kind, stem, rows = open_rows(p, hf_split)
    report = SourceReport(path=str(p), format=format, kind=kind, split=split)
    fmt: str | None = None if format == "auto" else format
    seen: set[str] = set()
    ids: list[str] = []
    prompts: list[str] = []
    responses: list[list[str]] = []
    origins: list[list[str]] = []
    scores: list[list[float] | None] = []
    numbers: list[int] = []

    for number, item in rows:
        report.rows_read += 1
        try:
            checked = check_row(
                item, number, fmt=fmt, split=split, max_chars=max_chars, renderer=chat_template_renderer, stem=stem
            )
            if checked is None:
                report.filtered += 1
                continue
            rid, fmt, group = checked
            report.format = fmt
            if rid in seen:
                raise duplicate_id(rid)
        except BadRow as bad:
            message = bad_row_message(p, number, bad)
            if on_bad_row == "error":
                raise bad_row_error(p, number, bad) from None
            report.skipped[bad.reason] = report.skipped.get(bad.reason, 0) + 1
            if len(report.examples) < MAX_EXAMPLES:
                report.examples.append(message)
            continue
        seen.add(rid)
        ids.append(rid)
        prompts.append(group.prompt)
        responses.append(group.responses)
        origins.append(group.origins)
        scores.append(group.scores)
        numbers.append(number)

    report.rows_out = len(ids)
    if not ids:
        if report.rows_read == 0:
            why = "source is empty (no rows)"
        elif report.skipped:
            why = (
                f"no valid rows ({report.rows_read} read, {report.filtered} of other splits, "
                f"{report.skipped_total} bad: {report.skipped}); e.g. {report.examples[0]}"
            )
        else:
            why = f"no rows with split {split!r} among {report.rows_read} rows"
        raise SourceError(f"{p}: {why}", path=str(p))

    n = len(ids)
    table = pa.Table.from_arrays(
        [
            pa.array(ids, pa.string()),
            pa.array(prompts, pa.string()),
            pa.array(responses, pa.list_(pa.string())),
            pa.array(origins, pa.list_(pa.string())),
            pa.array(scores, pa.list_(pa.float64())),
            pa.array([p.name] * n, pa.string()),
            pa.array(numbers, pa.int64()),
        ],
        schema=BASE_SCHEMA,
    )
    # Cheap vectorised re-check: the readers and the contract must agree.
    return validate_records(table), report
