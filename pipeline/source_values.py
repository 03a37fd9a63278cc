"""The checks of one field of a source row: strings that are valid Unicode and not empty, lists, finite scores; a
failed check raises :class:`pipeline.source_errors.BadRow` with its reason and field."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from pipeline.source_errors import (
    BAD_SCORE,
    EMPTY_PROMPT,
    EMPTY_RESPONSE,
    INVALID_UTF8,
    MISSING_FIELD,
    WRONG_TYPE,
    BadRow,
)

GROUND_TRUTH_KEYS: Final = ("response", "reference", "output")


@dataclass
class Group:
    prompt: str
    responses: list[str]
    response_fields: list[str]  # source field of each response, so too_long can name it
    origins: list[str]
    scores: list[float] | None


def type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def get_field(row: Mapping[str, Any], key: str) -> Any:
    # A null counts as absent: Parquet and HF tables give every row every column.
    value = row.get(key)
    if value is None:
        raise BadRow(MISSING_FIELD, key, "field is missing")
    return value


def check_unicode(value: str, name: str) -> None:
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
        raise BadRow(WRONG_TYPE, name, f"expected a string, got {type_name(value)}")
    if not value.strip():
        raise BadRow(empty_reason, name, f"{what} is empty")
    check_unicode(value, name)
    return value


def prompt_text(value: Any, name: str) -> str:
    return _string(value, name, EMPTY_PROMPT, "prompt")


def response_text(value: Any, name: str) -> str:
    return _string(value, name, EMPTY_RESPONSE, "response")


def list_field(value: Any, name: str) -> list[Any]:
    if not isinstance(value, list):
        raise BadRow(WRONG_TYPE, name, f"expected a list, got {type_name(value)}")
    return value


def score_field(value: Any, name: str) -> float:
    if value is None:
        raise BadRow(BAD_SCORE, name, "score is null")
    # bool is an int subclass, but true/false is never a meaningful score.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRow(BAD_SCORE, name, f"score is not a number (got {type_name(value)} {value!r:.40})")
    try:
        score = float(value)
    except OverflowError:
        raise BadRow(BAD_SCORE, name, "score is too large for a float64") from None
    if math.isnan(score):
        raise BadRow(BAD_SCORE, name, "score is NaN")
    if math.isinf(score):
        raise BadRow(BAD_SCORE, name, "score is infinite")
    return score


def pair_scores(row: Mapping[str, Any]) -> list[float] | None:
    chosen, rejected = row.get("score_chosen"), row.get("score_rejected")
    if chosen is None and rejected is None:
        return None
    if chosen is None or rejected is None:
        missing, given = ("score_chosen", "score_rejected") if chosen is None else ("score_rejected", "score_chosen")
        raise BadRow(MISSING_FIELD, missing, f"field is missing ({given} is given; scores come in pairs)")
    return [score_field(chosen, "score_chosen"), score_field(rejected, "score_rejected")]
