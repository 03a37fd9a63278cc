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
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch

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


def pad_sequences(prompts: list[list[int]], responses: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad ``prompt + response`` sequences into ``input_ids``, ``attention_mask`` and ``response_mask`` [N, L]."""
    lengths = [len(p) + len(r) for p, r in zip(prompts, responses)]
    width = max(lengths)
    input_ids = np.full((len(lengths), width), pad_id, dtype=np.int64)
    attention = np.zeros((len(lengths), width), dtype=bool)
    response = np.zeros((len(lengths), width), dtype=bool)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        input_ids[i, : len(p)] = p
        input_ids[i, len(p) : len(p) + len(r)] = r
        attention[i, : len(p) + len(r)] = True
        response[i, len(p) : len(p) + len(r)] = True
    return {
        "input_ids": torch.from_numpy(input_ids),
        "attention_mask": torch.from_numpy(attention),
        "response_mask": torch.from_numpy(response),
    }


@dataclass
class Packed:
    """Responses laid out for one forward pass: ``R`` rows of ``L`` tokens, ``M`` response tokens.

    Shared (``shared=True``): each prompt appears once per block, its responses after it; a response attends
    to its prompt and to itself only, with positions continuing from the prompt, so its log-probs equal
    those of ``prompt + response`` alone. Several blocks share a row; padding only fills the end of a row.
    ``attention_mask`` is then ``[R, 1, L, L]`` (query attends key).

    Not shared: one ``prompt + response`` per row, right-padded, and ``attention_mask`` is the ``[R, L]``
    padding mask, from which the model builds its own causal (and sliding-window) masks: the layout for
    attention backends and architectures where a custom block mask is not exact.
    """

    input_ids: torch.Tensor  # [R, L]
    position_ids: torch.Tensor  # [R, L]
    attention_mask: torch.Tensor  # [R, 1, L, L] bool (shared) or [R, L] bool (not shared)
    rows: torch.Tensor  # [M] row of each response token's prediction
    positions: torch.Tensor  # [M] position whose logits predict it
    labels: torch.Tensor  # [M] the token
    sequences: torch.Tensor  # [M] which response (0..N-1, in the order given)
    response_lengths: torch.Tensor  # [N]
    tokens: int  # sum over responses of len(prompt) + len(response): the unpacked work
    computed_tokens: int  # tokens the forward pass computes, padding aside (a shared prompt counts once per block)
    shared: bool = True

    def to(self, device: torch.device) -> Packed:
        """The same batch with its tensors on ``device``."""
        return replace(
            self,
            **{
                f.name: getattr(self, f.name).to(device)
                for f in fields(self)
                if isinstance(getattr(self, f.name), torch.Tensor)
            },
        )


def _blocks(prompts, responses, row_tokens):
    """(prompt, [(sequence, response)]) blocks of at most ``row_tokens`` tokens (one response at least)."""
    blocks, seq = [], 0
    for prompt, group in zip(prompts, responses):
        current, length = [], len(prompt)
        for r in group:
            if current and length + len(r) > row_tokens:
                blocks.append((prompt, current))
                current, length = [], len(prompt)
            current.append((seq, r))
            length += len(r)
            seq += 1
        if current:
            blocks.append((prompt, current))
    return blocks, seq


def pack_shared_prompts(
    prompts: list[list[int]], responses: list[list[list[int]]], pad_id: int, row_tokens: int, share_prompts: bool = True
) -> Packed:
    """Pack ``responses[p]`` (each ending in EOS) after ``prompts[p]``; rows filled first-fit by decreasing length.
    With ``share_prompts=False`` every ``prompt + response`` gets a row of its own (see :class:`Packed`).

    Response ``n`` is the n-th in prompt-major order, as :class:`Packed` numbers them.
    """
    blocks, n_seq = _blocks(prompts, responses, row_tokens if share_prompts else 0)
    sizes = [len(p) + sum(len(r) for _, r in rs) for p, rs in blocks]
    capacity = max([row_tokens, *sizes]) if share_prompts else 0
    fill: list[int] = []
    placed = []  # (row, offset, block)
    for b in sorted(range(len(blocks)), key=lambda b: -sizes[b]):
        row = next((i for i, used in enumerate(fill) if used + sizes[b] <= capacity), len(fill))
        if row == len(fill):
            fill.append(0)
        placed.append((row, fill[row], blocks[b]))
        fill[row] += sizes[b]
    R, L = len(fill), max(fill)
    input_ids = np.full((R, L), pad_id, dtype=np.int64)
    position_ids = np.zeros((R, L), dtype=np.int64)
    block_of = np.full((R, L), -1, dtype=np.int64)  # -1: padding
    part_of = np.full((R, L), -2, dtype=np.int64)  # -1: prompt, n: response n, -2: padding
    idx = {k: [] for k in ("rows", "positions", "labels", "sequences")}
    lengths = np.zeros(n_seq, dtype=np.int64)
    tokens = 0
    for b, (row, start, (prompt, rs)) in enumerate(placed):
        lp = len(prompt)
        input_ids[row, start : start + lp] = prompt
        position_ids[row, start : start + lp] = np.arange(lp)
        block_of[row, start : start + lp] = b
        part_of[row, start : start + lp] = -1
        at = start + lp
        for seq, r in rs:
            lr = len(r)
            input_ids[row, at : at + lr] = r
            position_ids[row, at : at + lr] = np.arange(lp, lp + lr)
            block_of[row, at : at + lr] = b
            part_of[row, at : at + lr] = seq
            # token t is predicted at the previous position: the prompt's last token for t = 0
            idx["positions"].append(np.concatenate([[start + lp - 1], np.arange(at, at + lr - 1)]))
            idx["rows"].append(np.full(lr, row))
            idx["labels"].append(np.asarray(r))
            idx["sequences"].append(np.full(lr, seq))
            lengths[seq] = lr
            tokens += lp + lr
            at += lr
    block, part = torch.from_numpy(block_of), torch.from_numpy(part_of)
    if share_prompts:
        # [R, L, L] built by torch's vectorised comparisons (the collate thread builds it while a step runs).
        same_block = (block[:, :, None] == block[:, None, :]) & (block[:, :, None] >= 0)
        visible = (part[:, None, :] == -1) | (part[:, None, :] == part[:, :, None])
        causal = torch.ones(L, L, dtype=torch.bool).tril_()
        # Padding attends to itself only, so no attention row is empty (an empty row gives NaN).
        mask = ((same_block & visible & causal) | torch.eye(L, dtype=torch.bool)).unsqueeze(1)
    else:
        mask = block >= 0
    cat = {k: torch.from_numpy(np.concatenate(v).astype(np.int64)) for k, v in idx.items()}
    return Packed(
        input_ids=torch.from_numpy(input_ids),
        position_ids=torch.from_numpy(position_ids),
        attention_mask=mask,
        response_lengths=torch.from_numpy(lengths),
        tokens=tokens,
        computed_tokens=sum(sizes),
        shared=share_prompts,
        **cat,
    )
