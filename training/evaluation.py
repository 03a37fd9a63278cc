"""Evaluation: the reference and the trained policy on held-out data.

On the embedded task: exact match, graded reward and slip rate of greedy answers to held-out task prompts.
On the user's data: implicit-reward accuracy on held-out contrast groups and, when a reward can score new
answers (``prepare.reward``: ``task``, ``module:function`` or ``model:<dir>``), the mean reward of both models'
greedy answers to the held-out prompts and the policy's win rate over the reference.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import ray
import torch
from transformers import AutoTokenizer

from actors.generator import VLLMAnswers
from actors.heldout import HeldoutScores
from actors.reward_model import RewardModelScores
from pipeline import storage, task
from pipeline.shards import read_manifest, verified_shard_files
from pipeline.stages import load_scorer
from pipeline.tokenize import chat_renderer, encode_prompt, pad_token_id, response_end_id, user_prompt
from training import plots
from training.group_reader import split_heldout
from training.progress import Progress, resident_mb, restart_peak
from training.study_stats import interval


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


def task_scores(prompts: list[str], answers: list[str]) -> dict[str, float]:
    """Exact match, mean reward and slip rate of answers to embedded-task prompts."""
    return {k: sum(v) / len(v) for k, v in task_scores_per_prompt(prompts, answers).items()}


def paired_differences(reference: dict[str, list[float]], policy: dict[str, list[float]]) -> dict[str, float]:
    """Policy minus reference per prompt, for exact match and mean reward: the mean and the half-width of its 95%
    interval over prompts (``<metric>_diff``, ``<metric>_diff_ci95``)."""
    out = {}
    for metric in ("exact_match", "mean_reward"):
        mean, half = interval([b - a for a, b in zip(reference[metric], policy[metric])])
        out.update({f"{metric}_diff": mean, f"{metric}_diff_ci95": half})
    return out


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
    group_ids = sorted({g for f in files for g in f.read_table(columns=["group_id"])["group_id"].to_pylist()})
    return files, split_heldout(group_ids, cfg.train.heldout_fraction, cfg.seed)[1]


def heldout_margins(model_dir: str | Path, cfg) -> tuple[float, dict[str, list[float]]]:
    """Implicit-reward accuracy of a model against the reference (``cfg.policy_dir()``) on the held-out contrast
    groups, and its anchor-minus-negative margins by the negative's origin. Both models are scored by a Ray actor
    (:class:`actors.heldout.HeldoutScores`, the model actors' resources) in the trainer's precision, so the driver
    loads no model and reads no group."""
    p = cfg.prepare
    files, held = heldout_groups(cfg)
    actor = ray.remote(num_cpus=p.model_actor_cpus, num_gpus=p.model_actor_gpus or None)(HeldoutScores).remote(
        str(cfg.policy_dir()),
        str(model_dir),
        files,
        cfg.train.max_responses,
        cfg.train_dtype(),
        cfg.pack_row_tokens(),
        max(1, int(p.model_actor_cpus)),
    )
    try:
        return ray.get(actor.score.remote(held, cfg.train.beta, cfg.train.micro_groups))
    finally:
        ray.kill(actor)


def task_prompt_ids(cfg, model_dir: str | Path) -> tuple[list[str], list[list[int]], int]:
    """The task prompts of ``evaluate.split`` (held-out by default), their token ids as the model sees them (its
    chat template when one applies) and the token an answer ends with (the template's end of turn, else EOS)."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    render = chat_renderer(tokenizer, cfg.data.chat_template)
    prompts = [r["prompt"] for r in task.scored_split(cfg.seed, cfg.task, cfg.evaluate.split)]
    end_id = response_end_id(tokenizer, cfg.data.chat_template, render is not None)
    return prompts, [encode_prompt(tokenizer, *user_prompt(p, render)) for p in prompts], end_id


def task_answers(model_dir: str | Path, cfg) -> list[str]:
    """Greedy vLLM answers of a model to the task prompts of ``evaluate.split``."""
    _, ids, end_id = task_prompt_ids(cfg, model_dir)
    return greedy_answers(model_dir, ids, cfg, end_id)


def answer_scores(cfg, model_dir: str | Path) -> dict[str, float]:
    """Scores of a model's greedy answers: task metrics on the embedded task (``evaluate.split``), the configured
    reward on held-out prompts of the user's data (none when no reward can score new answers)."""
    if not cfg.data.source:
        prompts, ids, end_id = task_prompt_ids(cfg, model_dir)
        return task_scores(prompts, greedy_answers(model_dir, ids, cfg, end_id))
    scorer = answer_scorer(cfg)
    if scorer is None:
        return {}
    prompts, ids, end_id = heldout_prompts(cfg)
    rewards = scorer(prompts, greedy_answers(model_dir, ids, cfg, end_id))
    return {"mean_reward": sum(rewards) / len(rewards)}


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


def reward_eval(cfg, reference: Path, policy: Path, scorer, out: Path) -> dict:
    """Mean reward of both models' greedy answers to the held-out prompts, and the policy's win rate (ties count
    half)."""
    prompts, ids, end_id = heldout_prompts(cfg)
    ref_answers, pol_answers = greedy_answers(reference, ids, cfg, end_id), greedy_answers(policy, ids, cfg, end_id)
    ref_rewards, pol_rewards = scorer(prompts, ref_answers), scorer(prompts, pol_answers)
    wins = [1.0 if b > a else 0.5 if b == a else 0.0 for a, b in zip(ref_rewards, pol_rewards)]
    samples = [
        {"prompt": p, "reference": a, "policy": b, "reference_reward": ra, "policy_reward": rb}
        for p, a, b, ra, rb in zip(prompts, ref_answers, pol_answers, ref_rewards, pol_rewards)
    ]
    (out / "samples.json").write_text(json.dumps(samples, indent=2))
    n = len(prompts)
    return {
        "heldout_prompts": n,
        "reference_mean_reward": sum(ref_rewards) / n,
        "policy_mean_reward": sum(pol_rewards) / n,
        "win_rate": sum(wins) / n,
        "samples": str(out / "samples.json"),
        **answer_lengths(reference, ref_answers, pol_answers),
    }


def answer_lengths(reference: Path, ref_answers: list[str], pol_answers: list[str]) -> dict[str, float]:
    """Mean answer length in tokens of both models (the reference's tokenizer), so a gain bought by length shows."""
    tok = AutoTokenizer.from_pretrained(reference)

    def mean(answers: list[str]) -> float:
        return sum(len(tok(a, add_special_tokens=False)["input_ids"]) for a in answers) / max(len(answers), 1)

    return {"reference_mean_answer_tokens": mean(ref_answers), "policy_mean_answer_tokens": mean(pol_answers)}


def _task_report(
    cfg, reference: Path, policy: Path, out: Path, progress: Progress
) -> tuple[dict, dict[str, tuple[float, float]]]:
    heldout = task.scored_split(cfg.seed, cfg.task, cfg.evaluate.split)
    prompts = [r["prompt"] for r in heldout]
    ref_answers = task_answers(reference, cfg)
    progress.update(3, finished="reference answers")
    pol_answers = task_answers(policy, cfg)
    progress.update(4, finished="policy answers")
    ref_each, pol_each = task_scores_per_prompt(prompts, ref_answers), task_scores_per_prompt(prompts, pol_answers)
    ref_scores, pol_scores = ({k: sum(v) / len(v) for k, v in each.items()} for each in (ref_each, pol_each))
    by_family: dict[str, dict[str, float]] = {}
    for family in sorted({r["family"] for r in heldout}):
        idx = [i for i, r in enumerate(heldout) if r["family"] == family]
        by_family[family] = {
            who: sum(each["exact_match"][i] for i in idx) / len(idx)
            for who, each in (("reference", ref_each), ("policy", pol_each))
        }
    samples = [
        {"prompt": p, "answer": r["response"], "reference": a, "policy": b}
        for p, r, a, b in list(zip(prompts, heldout, ref_answers, pol_answers))[:40]
    ]
    (out / "samples.json").write_text(json.dumps(samples, indent=2))
    report = {
        "heldout_prompts": len(prompts),
        "exact_match_by_family": by_family,
        "samples": str(out / "samples.json"),
        **answer_lengths(reference, ref_answers, pol_answers),
        **paired_differences(ref_each, pol_each),
        **{
            f"{who}_{k}": v
            for who, scores in (("reference", ref_scores), ("policy", pol_scores))
            for k, v in scores.items()
        },
    }
    bars = {
        "exact match": (ref_scores["exact_match"], pol_scores["exact_match"]),
        "mean reward": (ref_scores["mean_reward"], pol_scores["mean_reward"]),
        "slip rate": (ref_scores["slip_rate"], pol_scores["slip_rate"]),
    }
    return report, bars


def run_evaluate(cfg, policy: Path | None = None, job: str = "evaluate") -> dict:
    """Reference vs trained policy: held-out implicit-reward accuracy always; generated answers scored by the task
    (embedded task) or by the configured reward (user data; see the module docstring)."""
    out = cfg.job_dir(job)
    out.mkdir(parents=True, exist_ok=True)
    reference = cfg.policy_dir()
    if policy is None:  # the train job's export and metrics, fetched from output_dir when this machine has no copy
        policy = (
            storage.job_store(cfg, "train").pull(cfg.job_dir("train"), skip=("adapter", "tensorboard", "logs"))
            / "policy"
        )
    policy = Path(policy)
    if not (policy / "config.json").is_file():
        raise FileNotFoundError(f"trained policy {policy} not found: run `python -m jobs.train` first")
    rss_before = resident_mb()
    restart_peak()
    scorer = answer_scorer(cfg) if cfg.data.source else None
    progress = Progress("evaluate", 4 if scorer or not cfg.data.source else 2, "parts")
    ref_acc, _ = heldout_margins(reference, cfg)
    progress.update(1, finished="reference implicit rewards")
    pol_acc, margins = heldout_margins(policy, cfg)
    progress.update(2, finished="policy implicit rewards")
    report = {
        "reference_dir": str(reference),
        "policy_dir": str(policy),
        "reference_implicit_accuracy": ref_acc,
        "policy_implicit_accuracy": pol_acc,
    }
    bars = {"implicit acc.": (ref_acc, pol_acc)}
    if not cfg.data.source:
        task_report, task_bars = _task_report(cfg, reference, policy, out, progress)
        report.update(task_report)
        bars.update(task_bars)
    else:
        report.update(heldout_implicit_accuracy=pol_acc, reference_heldout_implicit_accuracy=ref_acc)
        if scorer is None:
            report["reward_eval"] = f"skipped: prepare.reward={cfg.prepare.reward!r} cannot score new answers"
        else:
            report.update(reward_eval(cfg, reference, policy, scorer, out))
            progress.update(4, finished="answers of both scored")
            bars.update({"mean reward": (report["reference_mean_reward"], report["policy_mean_reward"])})
    figures = {}
    metrics_csv = policy.parent / "metrics.csv"  # the train job writes <job_dir>/policy beside <job_dir>/metrics.csv
    if metrics_csv.is_file():
        figures["training_curves"] = str(
            plots.training_curves(metrics_csv, out / "training_curves.png", f"{cfg.train.loss} training ({cfg.name})")
        )
    figures["margins"] = str(
        plots.margin_histogram(
            margins, out / "reward_margins.png", "held-out implicit-reward margins of the policy, by negative type"
        )
    )
    figures["before_after"] = str(
        plots.before_after_bars(bars, out / "before_after.png", "held-out: reference vs trained policy")
    )
    # every model runs in an actor: the driver's memory does not grow with the models (the note's measurement)
    return {
        **report,
        "figures": figures,
        "driver_rss_mb_before": rss_before,
        "driver_peak_rss_mb": resident_mb("VmHWM"),
    }
