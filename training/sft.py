"""Supervised fine-tuning of the reference model on the embedded task's ground truth (Ray Train + DeepSpeed)."""

from __future__ import annotations

import json
import random
import tempfile
import time
from pathlib import Path

import deepspeed
import ray
import ray.train
from ray.train import Checkpoint, RunConfig
from ray.train.torch import TorchTrainer
from transformers import AutoTokenizer, LlamaForCausalLM

from configs.schema import Config
from pipeline import storage, task
from pipeline.tokenize import encode_prompt, encode_response, pad_sequences
from training.engine import deepspeed_config, lr_at, set_lr, set_worker_threads, trainer_resources, with_checkpointing
from training.evaluation import greedy_generate_hf, task_scores
from training.logprobs import response_token_counts, sequence_logps
from training.model import build_model, build_tokenizer, is_saved_model
from training.progress import Progress

LOG_EVERY = 25  # the loss shown is the mean of the last LOG_EVERY steps
FINGERPRINT_FILE = "sft_fingerprint.txt"


def sft_worker_loop(loop_config: dict) -> None:
    cfg = Config.model_validate(loop_config["config"])
    ctx = ray.train.get_context()
    world, rank = ctx.get_world_size(), ctx.get_world_rank()
    set_worker_threads(cfg.sft.cpus_per_worker)
    tokenizer = AutoTokenizer.from_pretrained(loop_config["tokenizer_dir"])
    if cfg.sft.batch_size % world:
        raise ValueError(f"sft.batch_size={cfg.sft.batch_size} must be divisible by the {world} workers")
    micro = cfg.sft.batch_size // world
    ds_config = deepspeed_config(
        cfg.sft.deepspeed,
        micro_batch=micro,
        grad_accum=1,
        world_size=world,
        lr=cfg.sft.lr,
        weight_decay=cfg.sft.weight_decay,
        device=ray.train.torch.get_device(),
    )
    model = with_checkpointing(build_model(cfg.model, tokenizer, cfg.seed), cfg.sft.deepspeed)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds_config)

    shard = ray.train.get_dataset_shard("train")
    step, tokens, started, losses = 0, 0, time.perf_counter(), []
    progress = Progress("sft", cfg.sft.steps, "steps")
    for batch in shard.iter_batches(batch_size=micro, batch_format="numpy", drop_last=True):
        set_lr(engine, lr_at(step, cfg.sft.steps, cfg.sft.warmup_steps, cfg.sft.lr))
        t = pad_sequences(list(batch["prompt_ids"]), list(batch["response_ids"]), tokenizer.pad_token_id)
        logps = sequence_logps(engine, t["input_ids"], t["attention_mask"], t["response_mask"])
        loss = -logps.sum() / response_token_counts(t["response_mask"]).sum()
        engine.backward(loss)
        engine.step()
        step += 1
        tokens += int(t["attention_mask"].sum()) * world
        losses.append(loss.item())
        if rank == 0:
            progress.update(
                step,
                loss=f"{sum(losses[-LOG_EVERY:]) / len(losses[-LOG_EVERY:]):.4f}",
                lr=f"{lr_at(step, cfg.sft.steps, cfg.sft.warmup_steps, cfg.sft.lr):.2e}",
                **{"tok/s": f"{tokens / (time.perf_counter() - started):.0f}"},
            )
        if step >= cfg.sft.steps:
            break
    if step < cfg.sft.steps:
        raise RuntimeError(f"SFT data ran out after {step} of {cfg.sft.steps} steps")

    metrics = {
        "steps": step,
        "final_loss": sum(losses[-LOG_EVERY:]) / len(losses[-LOG_EVERY:]),
        "train_tokens_per_second": tokens / (time.perf_counter() - started),
    }
    with tempfile.TemporaryDirectory() as tmp:
        with deepspeed.zero.GatheredParameters(
            list(engine.module.parameters()), enabled=cfg.sft.deepspeed.zero_stage == 3
        ):
            if rank == 0:
                engine.module.save_pretrained(tmp, safe_serialization=True)
                tokenizer.save_pretrained(tmp)
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp) if rank == 0 else None)


def sft_examples(cfg: Config, tokenizer) -> list[dict]:
    """Enough shuffled epochs of tokenized training rows for ``sft.steps`` optimizer steps."""
    train, _ = task.splits(cfg.seed, cfg.task)
    encoded = [
        {"prompt_ids": encode_prompt(tokenizer, r["prompt"]), "response_ids": encode_response(tokenizer, r["response"])}
        for r in train
    ]
    need = cfg.sft.steps * cfg.sft.batch_size
    rng = random.Random(cfg.seed)
    rows: list[dict] = []
    while len(rows) < need:
        epoch = encoded[:]
        rng.shuffle(epoch)
        rows += epoch
    # Slack for the per-worker split rounding down; extra rows are never reached.
    return rows[: need + cfg.sft.batch_size * 2]


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
