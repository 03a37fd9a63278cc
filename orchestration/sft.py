"""The SFT job's driver: trains (or reuses) the toy reference model with Ray Train and scores it on held-out prompts."""

from __future__ import annotations

import json
import time
from pathlib import Path

import ray
import ray.train
from ray.train import RunConfig
from ray.train.torch import TorchTrainer
from transformers import AutoTokenizer, LlamaForCausalLM

from configs.schema import Config
from pipeline import storage, task
from training.answer_scores import greedy_generate_hf, task_scores
from training.engine import trainer_resources
from training.model import build_tokenizer, is_saved_model
from training.sft import sft_examples, sft_worker_loop

FINGERPRINT_FILE = "sft_fingerprint.txt"  # beside the saved model: the settings it was trained with


def evaluate_reference(cfg: Config, model_dir: Path) -> dict[str, float]:
    _, heldout = task.splits(cfg.seed, cfg.task)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = LlamaForCausalLM.from_pretrained(model_dir)
    prompts = [r["prompt"] for r in heldout]
    answers = greedy_generate_hf(model, tokenizer, prompts, cfg.sft.eval_max_new_tokens)
    return task_scores(prompts, answers)


def run_sft(cfg: Config) -> dict:
    """Train (or reuse) the reference model and return the SFT report."""
    job_dir = storage.job_store(cfg, "sft").pull(cfg.job_dir("sft"))  # an object store's copy, if this machine has none
    model_dir = job_dir / "model"
    fingerprint = cfg.section_hash("task", "model", "sft")
    report_path = job_dir / "report.json"
    if is_saved_model(model_dir) and (model_dir / FINGERPRINT_FILE).is_file() and report_path.is_file():
        if (model_dir / FINGERPRINT_FILE).read_text() == fingerprint:
            print(f"[sft] reusing the reference model in {model_dir} (same task, model and sft settings)")
            return {**json.loads(report_path.read_text()), "reused": True}

    started = time.perf_counter()
    job_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(cfg.model.max_length)
    tokenizer_dir = job_dir / "tokenizer"
    tokenizer.save_pretrained(tokenizer_dir)
    dataset = ray.data.from_items(sft_examples(cfg, tokenizer))
    trainer = TorchTrainer(
        sft_worker_loop,
        train_loop_config={"config": cfg.model_dump(mode="json"), "tokenizer_dir": str(tokenizer_dir.resolve())},
        **trainer_resources(cfg.sft.num_workers, cfg.sft.cpus_per_worker, cfg.sft.gpus_per_worker),
        datasets={"train": dataset},
        run_config=RunConfig(name=f"{cfg.name}-sft", **storage.ray_run_storage(cfg)),
    )
    result = trainer.fit()
    train_seconds = time.perf_counter() - started
    result.checkpoint.to_directory(str(model_dir))
    (model_dir / FINGERPRINT_FILE).write_text(fingerprint)
    scores = evaluate_reference(cfg, model_dir)
    n_params = sum(p.numel() for p in LlamaForCausalLM.from_pretrained(model_dir).parameters())
    report = {
        "model_dir": str(model_dir),
        "parameters": n_params,
        "heldout_exact_match": scores["exact_match"],
        "heldout_mean_reward": scores["mean_reward"],
        "heldout_prompts": cfg.task.n_heldout,
        "train_seconds": train_seconds,
        "wall_seconds": time.perf_counter() - started,
        "reused": False,
        **{k: result.metrics.get(k) for k in ("steps", "final_loss", "train_tokens_per_second")},
    }
    # Kept beside the model whoever called (jobs.sft adds its own fields): the reuse check above needs it.
    report_path.write_text(json.dumps(report, indent=2, default=str))
    storage.job_store(cfg, "sft").push(job_dir)
    return report
