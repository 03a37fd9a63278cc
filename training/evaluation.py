"""Scoring generated answers on the embedded task."""
from __future__ import annotations

import torch

from pipeline import task


@torch.no_grad()
def greedy_generate_hf(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 64) -> list[str]:
    """Greedy answers with ``transformers`` generate (left padding); used where starting a vLLM engine costs more than it saves."""
    model.eval()
    tokenizer.padding_side = "left"
    answers: list[str] = []
    for start in range(0, len(prompts), batch_size):
        enc = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True)
        out = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        answers += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    return answers


def task_scores(prompts: list[str], answers: list[str]) -> dict[str, float]:
    """Exact match and mean graded reward of answers to embedded-task prompts."""
    exact = [task.exact_match(p, a) for p, a in zip(prompts, answers)]
    rewards = [task.reward(p, a) for p, a in zip(prompts, answers)]
    return {"exact_match": sum(exact) / len(exact), "mean_reward": sum(rewards) / len(rewards)}
