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

from pathlib import Path

import pyarrow as pa

from pipeline.conversations import plain_chat_renderer
from pipeline.records import BASE_SCHEMA, validate_records
from pipeline.source_errors import (
    FORMATS,
    MAX_EXAMPLES,
    ON_BAD_ROW,
    REASONS,
    SOURCE_KINDS,
    BadRow,
    ChatRenderer,
    SourceError,
    SourceReport,
    bad_row_error,
    bad_row_message,
    duplicate_id,
)
from pipeline.source_files import open_rows, source_kind
from pipeline.source_rows import check_row, detect_format

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
