"""Tokenization shared by the prepare job, the trainers and evaluation.

A sequence is ``prompt tokens (with the tokenizer's special prefix) + response tokens + EOS``;
the trainer's loss and the stored reference log-probs both cover exactly the response part,
so every stage must tokenize through these functions.
"""
from __future__ import annotations

import numpy as np
import torch


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    return tokenizer(prompt, add_special_tokens=True)["input_ids"]


def encode_response(tokenizer, response: str) -> list[int]:
    return tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def pad_sequences(
    prompts: list[list[int]], responses: list[list[int]], pad_id: int
) -> dict[str, torch.Tensor]:
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
