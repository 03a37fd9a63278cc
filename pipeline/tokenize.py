"""Tokenization shared by the prepare job, the trainers and evaluation.

A sequence is ``prompt tokens + response tokens + end``, the end being the chat template's end of turn for a
templated prompt and EOS otherwise (:func:`response_end_id`); the trainer's loss and the stored reference
log-probs both cover exactly the response part, so every stage must tokenize through these functions.

Special tokens appear once, where the tokenizer's own conventions put them: a plain-text prompt gets
the prefix the tokenizer adds (``add_special_tokens=True``: Llama's BOS, nothing for GPT-2 or Qwen); a
prompt rendered by a chat template already carries the template's special tokens, so it is tokenized
as ``apply_chat_template(..., tokenize=True)`` does, with ``add_special_tokens=False``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

Messages = Sequence[dict[str, str]]


def encode_prompt(tokenizer, prompt: str, templated: bool = False) -> list[int]:
    """Token ids of a prompt; ``templated``: the text was rendered by :func:`chat_renderer` (carries its specials)."""
    return tokenizer(prompt, add_special_tokens=not templated)["input_ids"]


def encode_response(tokenizer, response: str, end_id: int | None = None) -> list[int]:
    """Token ids of a response and the token that ends it: ``end_id`` (:func:`response_end_id`), else EOS."""
    return tokenizer(response, add_special_tokens=False)["input_ids"] + [
        tokenizer.eos_token_id if end_id is None else end_id
    ]


def pad_token_id(tokenizer, num_embeddings: int | None = None) -> int:
    """The id that fills padding: the tokenizer's pad token, else its EOS (Llama-3 and Mistral ship no pad token).
    Padding is never attended to nor scored, so any id the model can embed is exact; the vocabulary is never resized.
    A pad id beyond the model's ``num_embeddings`` (a tokenizer class whose default pad token the vocabulary lacks,
    as ``Qwen2Tokenizer`` adds ``<|endoftext|>``) is not one, so EOS fills in."""
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None and (num_embeddings is None or value < num_embeddings):
            return int(value)
    raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', tokenizer)!r} has neither a pad nor an EOS token")


def chat_template_text(tokenizer, setting: str) -> str | None:
    """The Jinja chat template ``data.chat_template`` names: the tokenizer's own (``auto``, when it has one), none
    (``none``: the plain ``Human:/Assistant:`` layout), or the template in a file."""
    if setting == "none":
        return None
    if setting == "auto":
        return getattr(tokenizer, "chat_template", None) or None
    path = Path(setting)
    if not path.is_file():
        raise FileNotFoundError(f"data.chat_template: {setting} is not 'auto', 'none' or a Jinja template file")
    return path.read_text()


_MARK = "RESPONSE-MARK-7f3a"


def response_end_id(tokenizer, setting: str, templated: bool) -> int:
    """The token a response ends with: under a chat template (``templated``), the special token the template writes
    right after an assistant message, which is what the model was tuned to stop on (Llama-3 ``<|eot_id|>``, ChatML
    ``<|im_end|>``, even where EOS is another token such as ``<|endoftext|>``); else, or where the template writes
    no special token there, EOS."""
    template = chat_template_text(tokenizer, setting) if templated else None
    if template:
        messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _MARK}]
        text = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False)
        after = tokenizer(text.split(_MARK, 1)[-1], add_special_tokens=False)["input_ids"] if _MARK in text else []
        special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
        if after and after[0] in special:
            return int(after[0])
    return int(tokenizer.eos_token_id)


def chat_renderer(tokenizer, setting: str) -> Callable[[Messages], str] | None:
    """How chat messages become prompt text (``data.chat_template``, see :func:`chat_template_text`); None for the
    plain layout. The renderer adds the generation prompt, as vLLM and TRL do for a prompt the model is to answer.
    """
    template = chat_template_text(tokenizer, setting)
    if template is None:
        return None

    def render(messages: Messages) -> str:
        return tokenizer.apply_chat_template(
            list(messages), chat_template=template, tokenize=False, add_generation_prompt=True
        )

    return render


def user_prompt(text: str, render: Callable[[Messages], str] | None) -> tuple[str, bool]:
    """A one-turn prompt (the embedded task's questions) as the model sees it: ``(text, templated)``, rendered as one
    user message when a chat template applies; pass both to :func:`encode_prompt`."""
    return (render([{"role": "user", "content": text}]), True) if render else (text, False)
