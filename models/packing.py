"""Batches of token sequences for a forward pass: padded rows, and prompts packed with their responses, each
prompt forwarded once and every response attending to it and itself (``[R, 1, L, L]`` block masks).
Used by the trainers, the reference scorer and the conformance checks alike."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np
import torch


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
