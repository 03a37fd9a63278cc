"""Evaluation: the reference and the trained policy on held-out data.

On the embedded task: exact match, graded reward and slip rate of greedy answers to held-out task prompts.
On the user's data: implicit-reward accuracy on held-out contrast groups and, when a reward can score new
answers (``prepare.reward``: ``task``, ``module:function`` or ``model:<dir>``), the mean reward of both models'
greedy answers to the held-out prompts and the policy's win rate over the reference.
"""

from __future__ import annotations

import json
from pathlib import Path

import ray

from actors.heldout import HeldoutScores
from orchestration.answers import (
    answer_lengths,
    answer_scorer,
    greedy_answers,
    heldout_groups,
    heldout_prompts,
    task_answers,
)
from pipeline import storage, task
from pipeline.shards import shard_group_ids, verified_shard_files
from training import plots
from training.answer_scores import family_means, paired_differences, task_scores_per_prompt
from training.progress import Progress, resident_mb, restart_peak


def _scores_actor(model_dir: str | Path, cfg, files: list) -> ray.actor.ActorHandle:
    """A :class:`actors.heldout.HeldoutScores` actor for ``model_dir`` against ``cfg``'s reference on ``files``."""
    p = cfg.prepare
    return ray.remote(num_cpus=p.model_actor_cpus, num_gpus=p.model_actor_gpus or None)(HeldoutScores).remote(
        str(cfg.policy_dir()),
        str(model_dir),
        files,
        cfg.train.max_responses,
        cfg.train_dtype(),
        cfg.pack_row_tokens(),
        max(1, int(p.model_actor_cpus)),
    )


def heldout_margins(model_dir: str | Path, cfg) -> tuple[float, dict[str, list[float]]]:
    """Implicit-reward accuracy of a model against the reference (``cfg.policy_dir()``) on the held-out contrast
    groups, and its anchor-minus-negative margins by the negative's origin. Both models are scored by a Ray actor
    (:class:`actors.heldout.HeldoutScores`, the model actors' resources) in the trainer's precision, so the driver
    loads no model and reads no group."""
    files, held = heldout_groups(cfg)
    actor = _scores_actor(model_dir, cfg, files)
    try:
        return ray.get(actor.score.remote(held, cfg.train.beta, cfg.train.micro_groups))
    finally:
        ray.kill(actor)


def preference_scores_on_test_rows(model_dir: str | Path, cfg, test_cfg) -> dict[str, float]:
    """Held-out preference accuracy (and its length-controlled version) of a model trained by ``cfg`` against
    its reference, on every group of ``test_cfg``'s prepared shards (the test rows, ``data.rows: test``), with the
    implicit reward ``cfg.train`` trains; scored in a Ray actor like :func:`heldout_margins`. The reference's
    log-probs, scored once (``model_dir`` is the reference), are kept beside the test rows' run and reused: every
    later model is scored by one forward, on the same batches as the reference was."""
    files = verified_shard_files(storage.job_store(test_cfg, "prepare") / "shards")
    group_ids = shard_group_ids(files)
    kept = Path(test_cfg.output_dir) / "reference_test_logps.json"
    layout = {"reference": str(cfg.policy_dir()), "group_ids": group_ids, "micro_groups": cfg.train.micro_groups}
    is_reference = Path(model_dir).resolve() == cfg.policy_dir().resolve()
    stored = json.loads(kept.read_text()) if kept.is_file() and not is_reference else None
    reference = stored["logps"] if stored is not None and stored["layout"] == layout else None
    actor = _scores_actor(model_dir, cfg, files)
    try:
        scores, logps = ray.get(actor.preference_accuracy.remote(group_ids, cfg.train, reference))
    finally:
        ray.kill(actor)
    if is_reference:
        kept.write_text(json.dumps({"layout": layout, "logps": logps}))
    return scores


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
    ref_family, pol_family = (family_means(prompts, each["exact_match"]) for each in (ref_each, pol_each))
    by_family = {f: {"reference": ref_family[f], "policy": pol_family[f]} for f in ref_family}
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
