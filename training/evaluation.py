"""Scoring generated answers on the embedded task."""
from __future__ import annotations

from pathlib import Path

import torch

from pipeline import task
from pipeline.tokenize import pad_token_id


@torch.no_grad()
def greedy_generate_hf(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 64) -> list[str]:
    """Greedy answers with ``transformers`` generate (left padding); used where starting a vLLM engine costs more than it saves."""
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
            pad_token_id=pad_token_id(tokenizer),
        )
        answers += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    return answers


def task_scores(prompts: list[str], answers: list[str]) -> dict[str, float]:
    """Exact match, mean graded reward and slip rate (answers that are the demonstrator's typical mistake)
    of answers to embedded-task prompts."""
    exact = [task.exact_match(p, a) for p, a in zip(prompts, answers)]
    rewards = [task.reward(p, a) for p, a in zip(prompts, answers)]
    slips = [a.strip() == task.demonstrator_slip(p) and not e for p, a, e in zip(prompts, answers, exact)]
    n = len(prompts)
    return {"exact_match": sum(exact) / n, "mean_reward": sum(rewards) / n, "slip_rate": sum(slips) / n}


def vllm_greedy_answers(model_dir: str | Path, prompts: list[str], max_model_len: int, max_tokens: int,
                        seed: int, cpus: float = 1, gpus: float = 0) -> list[str]:
    """Greedy answers through a vLLM engine in its own Ray actor (freed afterwards)."""
    import ray

    from actors.generator import VLLMAnswers

    actor = ray.remote(num_cpus=cpus, num_gpus=gpus or None)(VLLMAnswers).remote(str(model_dir), max_model_len, seed)
    try:
        return ray.get(actor.generate.remote(prompts, max_tokens))
    finally:
        ray.kill(actor)


@torch.no_grad()
def heldout_margins(model_dir: str | Path, cfg) -> tuple[float, dict[str, list[float]]]:
    """Implicit-reward accuracy of a model on the held-out contrast groups, and its anchor-minus-negative
    margins by the negative's origin."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.shards import read_shards
    from training.batches import collate, pack_groups
    from training.logprobs import forward_plan, packed_logps
    from training.objective import implicit_accuracy
    from training.train import split_heldout

    groups = {g["group_id"]: g for g in pack_groups(read_shards(cfg.job_dir("prepare") / "shards").to_pandas(),
                                                       cfg.train.max_responses)}
    _, held = split_heldout(list(groups), cfg.train.heldout_fraction, cfg.seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    plan = forward_plan(model)
    pad_id = pad_token_id(AutoTokenizer.from_pretrained(model_dir))
    correct = pairs = 0.0
    margins: dict[str, list[float]] = {}
    for gid in held:
        batch = collate([groups[gid]], pad_id, cfg.pack_row_tokens(), plan.share_prompts)
        policy = batch.gather(packed_logps(model, batch.packed, plan))
        rewards = cfg.train.beta * (policy - batch.ref_logps)
        c, p = implicit_accuracy(rewards, batch)
        correct, pairs = correct + c, pairs + p
        for member, r in zip(groups[gid]["members"], rewards):
            for origin, value in zip(member["origins"][1:], r[1 : len(member["origins"])]):
                margins.setdefault(origin, []).append(float(r[0] - value))
    return correct / max(pairs, 1), margins


def task_eval(model_dir: str | Path, cfg) -> tuple[list[str], dict[str, float]]:
    """Greedy vLLM answers of a model to the held-out task prompts, and their exact match and mean reward."""
    _, heldout = task.splits(cfg.seed, cfg.task)
    prompts = [r["prompt"] for r in heldout]
    answers = vllm_greedy_answers(model_dir, prompts, max_model_len=cfg.model.max_length,
                                  max_tokens=cfg.sft.eval_max_new_tokens, seed=cfg.seed,
                                  cpus=cfg.prepare.generator_cpus, gpus=cfg.prepare.generator_gpus)
    return answers, task_scores(prompts, answers)


def run_evaluate(cfg, policy: Path | None = None, job: str = "evaluate") -> dict:
    """Reference vs trained policy on held-out task prompts (vLLM greedy) and held-out preference groups."""
    import json

    from training import plots

    out = cfg.job_dir(job)
    out.mkdir(parents=True, exist_ok=True)
    reference = cfg.policy_dir()
    policy = Path(policy or cfg.job_dir("train") / "policy")
    if not (policy / "config.json").is_file():
        raise FileNotFoundError(f"trained policy {policy} not found: run `python -m jobs.train` first")
    _, heldout = task.splits(cfg.seed, cfg.task)
    prompts = [r["prompt"] for r in heldout]
    ref_answers, ref_scores = task_eval(reference, cfg)
    pol_answers, pol_scores = task_eval(policy, cfg)
    ref_acc, _ = heldout_margins(reference, cfg)
    pol_acc, margins = heldout_margins(policy, cfg)

    by_family: dict[str, dict[str, float]] = {}
    for family in sorted({r["family"] for r in heldout}):
        idx = [i for i, r in enumerate(heldout) if r["family"] == family]
        by_family[family] = {
            "reference": task_scores([prompts[i] for i in idx], [ref_answers[i] for i in idx])["exact_match"],
            "policy": task_scores([prompts[i] for i in idx], [pol_answers[i] for i in idx])["exact_match"],
        }
    figures = {}
    metrics_csv = policy.parent / "metrics.csv"  # the train job writes <job_dir>/policy beside <job_dir>/metrics.csv
    if metrics_csv.is_file():
        figures["training_curves"] = str(plots.training_curves(metrics_csv, out / "training_curves.png", f"{cfg.train.loss} training ({cfg.name})"))
    figures["margins"] = str(plots.margin_histogram(margins, out / "reward_margins.png", "held-out implicit-reward margins of the policy, by negative type"))
    figures["before_after"] = str(plots.before_after_bars(
        {"exact match": (ref_scores["exact_match"], pol_scores["exact_match"]),
         "mean reward": (ref_scores["mean_reward"], pol_scores["mean_reward"]),
         "implicit acc.": (ref_acc, pol_acc),
         "slip rate": (ref_scores["slip_rate"], pol_scores["slip_rate"])},
        out / "before_after.png", "held-out: SFT reference vs trained policy"))
    samples = [{"prompt": p, "answer": r["response"], "reference": a, "policy": b}
               for p, r, a, b in list(zip(prompts, heldout, ref_answers, pol_answers))[:40]]
    (out / "samples.json").write_text(json.dumps(samples, indent=2))
    return {
        "reference_dir": str(reference), "policy_dir": str(policy), "heldout_prompts": len(prompts),
        "reference_exact_match": ref_scores["exact_match"], "policy_exact_match": pol_scores["exact_match"],
        "reference_mean_reward": ref_scores["mean_reward"], "policy_mean_reward": pol_scores["mean_reward"],
        "reference_slip_rate": ref_scores["slip_rate"], "policy_slip_rate": pol_scores["slip_rate"],
        "reference_implicit_accuracy": ref_acc, "policy_implicit_accuracy": pol_acc,
        "exact_match_by_family": by_family, "figures": figures, "samples": str(out / "samples.json"),
    }
