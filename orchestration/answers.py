"""The models' greedy answers (vLLM in an actor, or transformers' generate), the prompts they answer (the task's
split, or the held-out prompts of the shards) and how answers are scored (the task's verifier, the configured
reward, paired differences)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import ray
from transformers import AutoTokenizer

from actors.generator import VLLMAnswers
from actors.reward_model import RewardModelScores
from pipeline import storage, task
from pipeline.rewards import load_scorer
from pipeline.shards import read_manifest, shard_group_ids, verified_shard_files
from pipeline.tokenize import chat_renderer, encode_prompt, response_end_id, user_prompt
from training.answer_scores import task_scores
from training.group_reader import split_heldout


def greedy_answers(model_dir: str | Path, prompt_ids: list[list[int]], cfg, end_id: int | None = None) -> list[str]:
    """Greedy answers to tokenized prompts (the evaluation settings of ``cfg``) through a vLLM engine in its own Ray
    actor, with the generator's resources and engine settings (freed afterwards)."""
    p = cfg.prepare
    actor = ray.remote(num_cpus=p.generator_cpus, num_gpus=p.generator_gpus or None)(VLLMAnswers).remote(
        str(model_dir), cfg.model.max_length, p.vllm, cfg.seed, cfg.vllm_dtype(), p.generator_cpu_bind
    )
    try:
        return ray.get(actor.generate.remote(prompt_ids, cfg.evaluate.max_new_tokens, end_id))
    finally:
        ray.kill(actor)


def heldout_groups(cfg) -> tuple[list[str], list[int]]:
    """The verified shard files and the ids of the held-out contrast groups (the trainer's split)."""
    files = verified_shard_files(storage.job_store(cfg, "prepare") / "shards")
    group_ids = shard_group_ids(files)
    return files, split_heldout(group_ids, cfg.train.heldout_fraction, cfg.seed)[1]


def task_prompt_ids(cfg, tokenizer) -> tuple[list[str], list[list[int]], int]:
    """The task prompts of ``evaluate.split`` (held-out by default), their token ids as the model sees them (its
    chat template when one applies) and the token an answer ends with (the template's end of turn, else EOS)."""
    render = chat_renderer(tokenizer, cfg.data.chat_template)
    prompts = [r["prompt"] for r in task.scored_split(cfg.seed, cfg.task, cfg.evaluate.split)]
    end_id = response_end_id(tokenizer, cfg.data.chat_template, render is not None)
    return prompts, [encode_prompt(tokenizer, *user_prompt(p, render)) for p in prompts], end_id


def task_answers(model_dir: str | Path, cfg) -> list[str]:
    """Greedy vLLM answers of a model to the task prompts of ``evaluate.split``."""
    _, ids, end_id = task_prompt_ids(cfg, AutoTokenizer.from_pretrained(model_dir))
    return greedy_answers(model_dir, ids, cfg, end_id)


def answer_scores(cfg, model_dir: str | Path) -> dict[str, float]:
    """Scores of a model's greedy answers and their mean length in tokens (``answer_tokens``): task metrics on the
    embedded task (``evaluate.split``), the configured reward on held-out prompts of the user's data (no scores
    when no reward can score new answers)."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if not cfg.data.source:
        prompts, ids, end_id = task_prompt_ids(cfg, tokenizer)
        answers = greedy_answers(model_dir, ids, cfg, end_id)
        return {**task_scores(prompts, answers), "answer_tokens": mean_answer_tokens(tokenizer, answers)}
    scorer = answer_scorer(cfg)
    if scorer is None:
        return {}
    prompts, ids, end_id = heldout_prompts(cfg)
    answers = greedy_answers(model_dir, ids, cfg, end_id)
    rewards = scorer(prompts, answers)
    return {"mean_reward": sum(rewards) / len(rewards), "answer_tokens": mean_answer_tokens(tokenizer, answers)}


def answer_scorer(cfg) -> Callable[[list[str], list[str]], list[float]] | None:
    """How new answers to the user's prompts are scored: the configured programmatic or model reward, or None when
    the reward only exists in the source (``source``) or not at all (``none``)."""
    spec = cfg.prepare.reward
    if spec == "auto":
        spec = "task" if not cfg.data.source else "none"
    if spec in ("source", "none"):
        return None
    if spec.startswith("model:"):
        p = cfg.prepare
        actor = ray.remote(num_cpus=p.model_actor_cpus, num_gpus=p.model_actor_gpus or None)(RewardModelScores).remote(
            spec[len("model:") :], max(1, int(p.model_actor_cpus)), p.score_batch_size, cfg.model.dtype
        )
        return lambda prompts, answers: ray.get(
            actor.score_texts.remote(prompts, answers)
        )  # the actor lives as long as this
    scorer = load_scorer(spec)
    return lambda prompts, answers: [float(scorer(p, a)) for p, a in zip(prompts, answers)]


def heldout_prompts(cfg) -> tuple[list[str], list[list[int]], int | None]:
    """Prompts of the held-out contrast groups (text and the token ids the shards hold), at most
    ``evaluate.max_prompts``,
    and the token the shards' responses end with (the manifest's record of prepare; None: the model's EOS alone)."""
    files, held = heldout_groups(cfg)
    rows = pq.read_table(
        [f.path for f in files],
        filesystem=files[0].fs,
        columns=["group_id", "prompt", "prompt_ids"],
        filters=[("group_id", "in", held)],
    ).to_pandas()
    rows = rows.sort_values("group_id", kind="stable").head(cfg.evaluate.max_prompts)
    end_id = read_manifest(storage.job_store(cfg, "prepare") / "shards").get("source", {}).get("response_end_id")
    return list(rows["prompt"]), [[int(t) for t in ids] for ids in rows["prompt_ids"]], end_id


def mean_answer_tokens(tokenizer, answers: list[str]) -> float:
    """Mean length of answers in tokens, so a gain bought by length shows."""
    return sum(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers) / max(len(answers), 1)


def answer_lengths(reference: Path, ref_answers: list[str], pol_answers: list[str]) -> dict[str, float]:
    """Mean answer length in tokens of both models (the reference's tokenizer)."""
    tok = AutoTokenizer.from_pretrained(reference)
    return {
        "reference_mean_answer_tokens": mean_answer_tokens(tok, ref_answers),
        "policy_mean_answer_tokens": mean_answer_tokens(tok, pol_answers),
    }
