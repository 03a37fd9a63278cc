"""How greedy answers are produced in-process (transformers' generate) and scored on the embedded task: exact
match, graded reward, slip rate, and paired differences of two models over the same prompts."""

from __future__ import annotations

import torch

from pipeline import task
from pipeline.tokenize import pad_token_id
from training.study_stats import family_metric, interval


@torch.no_grad()
def greedy_generate_hf(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 64) -> list[str]:
    """Greedy answers with ``transformers`` generate (left padding); used where starting a vLLM engine costs more than
    it saves."""
    model.eval()
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # padding only; the model's vocabulary is untouched
    answers: list[str] = []
    for start in range(0, len(prompts), batch_size):
        enc = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True)
        out = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=pad_token_id(tokenizer, model.get_input_embeddings().num_embeddings),
        )
        answers += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    return answers


def task_scores_per_prompt(prompts: list[str], answers: list[str]) -> dict[str, list[float]]:
    """Per answer to an embedded-task prompt: exact match (0/1), reward, and whether it is the demonstrator's typical
    mistake (a slip)."""
    exact = [float(task.exact_match(p, a)) for p, a in zip(prompts, answers)]
    rewards = [task.reward(p, a) for p, a in zip(prompts, answers)]
    slips = [float(a.strip() == task.demonstrator_slip(p) and not e) for p, a, e in zip(prompts, answers, exact)]
    return {"exact_match": exact, "mean_reward": rewards, "slip_rate": slips}


def family_means(prompts: list[str], values: list[float]) -> dict[str, float]:
    """The mean of a per-answer figure over the answers to each task family's prompts."""
    by_family: dict[str, list[float]] = {}
    for prompt, value in zip(prompts, values):
        by_family.setdefault(task.family_of(prompt), []).append(value)
    return {family: sum(v) / len(v) for family, v in sorted(by_family.items())}


def task_scores(prompts: list[str], answers: list[str]) -> dict[str, float]:
    """Exact match, mean reward and slip rate of answers to embedded-task prompts, and exact match per family
    (``exact_match[<family>]``)."""
    each = task_scores_per_prompt(prompts, answers)
    return {
        **{k: sum(v) / len(v) for k, v in each.items()},
        **{family_metric(f): v for f, v in family_means(prompts, each["exact_match"]).items()},
    }


def paired_differences(reference: dict[str, list[float]], policy: dict[str, list[float]]) -> dict[str, float]:
    """Policy minus reference per prompt, for exact match and mean reward: the mean and the half-width of its 95%
    interval over prompts (``<metric>_diff``, ``<metric>_diff_ci95``)."""
    out = {}
    for metric in ("exact_match", "mean_reward"):
        mean, half = interval([b - a for a, b in zip(reference[metric], policy[metric])])
        out.update({f"{metric}_diff": mean, f"{metric}_diff_ci95": half})
    return out
