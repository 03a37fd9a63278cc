"""Chat messages in a source row: their checks, the split of the final assistant answer from the prompt, and the
prompt's rendering (the tokenizer's chat template, or the Anthropic HH layout)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from pipeline.source_errors import (
    EMPTY_PROMPT,
    EMPTY_RESPONSE,
    MISSING_FIELD,
    RENDER_FAILED,
    WRONG_TYPE,
    BadRow,
    ChatRenderer,
)
from pipeline.source_values import check_unicode, list_field, prompt_text, response_text, type_name

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


def message_list(value: Any, name: str) -> list[dict[str, str]]:
    items = list_field(value, name)
    if not items:
        raise BadRow(EMPTY_PROMPT if name in ("messages", "prompt") else EMPTY_RESPONSE, name, "message list is empty")
    out: list[dict[str, str]] = []
    for i, item in enumerate(items):
        where = f"{name}[{i}]"
        if not isinstance(item, Mapping):
            raise BadRow(WRONG_TYPE, where, f"expected a message object, got {type_name(item)}")
        role, content = item.get("role"), item.get("content")
        if role is None:
            raise BadRow(MISSING_FIELD, f"{where}.role", "field is missing")
        if content is None:
            raise BadRow(MISSING_FIELD, f"{where}.content", "field is missing")
        if not isinstance(role, str) or not role:
            raise BadRow(WRONG_TYPE, f"{where}.role", f"expected a non-empty string, got {type_name(role)}")
        if not isinstance(content, str):
            raise BadRow(WRONG_TYPE, f"{where}.content", f"expected a string, got {type_name(content)}")
        check_unicode(content, f"{where}.content")
        # Only role/content go to the template: other keys (tool calls, names)
        # are not part of this contract.
        out.append({"role": role, "content": content})
    return out


def split_answer(messages: list[dict[str, str]], name: str) -> tuple[list[dict[str, str]], str, str]:
    last = len(messages) - 1
    if messages[last]["role"] != "assistant":
        raise BadRow(
            MISSING_FIELD,
            f"{name}[{last}]",
            f"last message must be the assistant's answer, got role {messages[last]['role']!r}",
        )
    where = f"{name}[{last}].content"
    return messages[:last], response_text(messages[last]["content"], where), where


def render_prompt(prompt_messages: list[dict[str, str]], name: str, renderer: ChatRenderer | None) -> str:
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
        raise BadRow(RENDER_FAILED, name, f"chat_template_renderer returned {type_name(text)}, not a string")
    return prompt_text(text, name)
