"""One source row to one contrast group: a parser per row format, format detection, and :func:`check_row`, which
reads any row into a group or a :class:`pipeline.source_errors.BadRow`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from pipeline.conversations import message_list, render_prompt, split_answer
from pipeline.source_errors import (
    FORMATS,
    LENGTH_MISMATCH,
    LINE_FIELD,
    MISSING_FIELD,
    NOT_AN_OBJECT,
    PREFIX_MISMATCH,
    TOO_FEW_RESPONSES,
    TOO_LONG,
    UNKNOWN_FORMAT,
    WRONG_TYPE,
    BadRow,
    ChatRenderer,
)
from pipeline.source_values import (
    GROUND_TRUTH_KEYS,
    Group,
    check_unicode,
    get_field,
    list_field,
    pair_scores,
    prompt_text,
    response_text,
    score_field,
    type_name,
)


def _parse_paired(row: Mapping[str, Any], renderer: ChatRenderer | None) -> Group:
    prompt = prompt_text(get_field(row, "prompt"), "prompt")
    chosen = response_text(get_field(row, "chosen"), "chosen")
    rejected = response_text(get_field(row, "rejected"), "rejected")
    return Group(prompt, [chosen, rejected], ["chosen", "rejected"], ["chosen", "rejected"], pair_scores(row))


def _parse_scored(row: Mapping[str, Any], renderer: ChatRenderer | None) -> Group:
    if row.get("completions") is not None:
        return _parse_ultrafeedback(row)
    prompt = prompt_text(get_field(row, "prompt"), "prompt")
    items = list_field(get_field(row, "responses"), "responses")
    if len(items) < 2:
        raise BadRow(TOO_FEW_RESPONSES, "responses", f"needs at least 2 responses, got {len(items)}")
    fields = [f"responses[{i}]" for i in range(len(items))]
    responses = [response_text(v, f) for v, f in zip(items, fields, strict=True)]
    scores: list[float] | None = None
    raw_scores = row.get("scores")
    if raw_scores is not None:
        raw_scores = list_field(raw_scores, "scores")
        if len(raw_scores) != len(responses):
            raise BadRow(LENGTH_MISMATCH, "scores", f"{len(raw_scores)} scores for {len(responses)} responses")
        scores = [score_field(v, f"scores[{i}]") for i, v in enumerate(raw_scores)]
    return Group(prompt, responses, fields, ["dataset"] * len(responses), scores)


def _parse_ultrafeedback(row: Mapping[str, Any]) -> Group:
    key = "prompt" if row.get("prompt") is not None else "instruction"
    prompt = prompt_text(get_field(row, key), key)
    items = list_field(row["completions"], "completions")
    if len(items) < 2:
        raise BadRow(TOO_FEW_RESPONSES, "completions", f"needs at least 2 completions, got {len(items)}")
    responses: list[str] = []
    fields: list[str] = []
    scores: list[float] = []
    for i, item in enumerate(items):
        where = f"completions[{i}]"
        if not isinstance(item, Mapping):
            raise BadRow(WRONG_TYPE, where, f"expected an object, got {type_name(item)}")
        response_field = f"{where}.response"
        if item.get("response") is None:
            raise BadRow(MISSING_FIELD, response_field, "field is missing")
        responses.append(response_text(item["response"], response_field))
        fields.append(response_field)
        if item.get("overall_score") is None:
            raise BadRow(MISSING_FIELD, f"{where}.overall_score", "field is missing")
        scores.append(score_field(item["overall_score"], f"{where}.overall_score"))
    return Group(prompt, responses, fields, ["dataset"] * len(responses), scores)


def _parse_ground_truth(row: Mapping[str, Any], renderer: ChatRenderer | None) -> Group:
    prompt = prompt_text(get_field(row, "prompt"), "prompt")
    for key in GROUND_TRUTH_KEYS:
        if row.get(key) is not None:
            response = response_text(row[key], key)
            return Group(prompt, [response], [key], ["ground_truth"], None)
    raise BadRow(MISSING_FIELD, "response", "field is missing (also looked for 'reference' and 'output')")


def _parse_conversational(row: Mapping[str, Any], renderer: ChatRenderer | None) -> Group:
    if row.get("chosen") is not None or row.get("rejected") is not None:
        return _parse_conversational_pair(row, renderer)
    messages = message_list(get_field(row, "messages"), "messages")
    prompt_messages, answer, where = split_answer(messages, "messages")
    prompt = render_prompt(prompt_messages, "messages", renderer)
    return Group(prompt, [answer], [where], ["ground_truth"], None)


def _parse_conversational_pair(row: Mapping[str, Any], renderer: ChatRenderer | None) -> Group:
    chosen = message_list(get_field(row, "chosen"), "chosen")
    rejected = message_list(get_field(row, "rejected"), "rejected")
    if isinstance(row.get("prompt"), list):
        # TRL's explicit-prompt layout: prompt messages kept apart from the answers.
        prefix = message_list(row["prompt"], "prompt")
        if chosen[: len(prefix)] != prefix:
            chosen = prefix + chosen
        if rejected[: len(prefix)] != prefix:
            rejected = prefix + rejected
    chosen_prompt, chosen_text, chosen_where = split_answer(chosen, "chosen")
    rejected_prompt, rejected_text, rejected_where = split_answer(rejected, "rejected")
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
    prompt = render_prompt(chosen_prompt, "chosen", renderer)
    return Group(
        prompt,
        [chosen_text, rejected_text],
        [chosen_where, rejected_where],
        ["chosen", "rejected"],
        pair_scores(row),
    )


_PARSERS: Final[dict[str, Callable[[Mapping[str, Any], ChatRenderer | None], Group]]] = {
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
    if "prompt" in keys and keys.intersection(GROUND_TRUTH_KEYS):
        return "ground_truth"
    return None


def _row_id(row: Mapping[str, Any], stem: str, number: int) -> str:
    value = row.get("id")
    if value is None:
        return f"{stem}:{number}"
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise BadRow(WRONG_TYPE, "id", f"expected a string or an integer, got {type_name(value)}")
    if isinstance(value, str):
        if not value.strip():
            raise BadRow(WRONG_TYPE, "id", "id is an empty string")
        check_unicode(value, "id")
        return value
    return str(value)


def before_format(item: Any, split: str | None) -> bool:
    """Checks every row gets before its format matters; False for a row of another split."""
    if isinstance(item, BadRow):
        raise item
    if not isinstance(item, Mapping):
        raise BadRow(NOT_AN_OBJECT, LINE_FIELD, f"expected a JSON object, got {type_name(item)}")
    if split is not None:
        row_split = get_field(item, "split")
        if not isinstance(row_split, str):
            raise BadRow(WRONG_TYPE, "split", f"expected a string, got {type_name(row_split)}")
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
) -> tuple[str, str, Group] | None:
    """One source row (a decoded JSON value or a table row) as ``(id, format, record)``; None for a row of another
    split.  ``fmt=None`` detects the format from this row's keys.  Raises :class:`BadRow` for a bad row; duplicate
    ids are the caller's to find (they need every row)."""
    if not before_format(item, split):
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
