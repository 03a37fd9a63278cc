"""The SFT worker loop (Ray Train + DeepSpeed): the toy reference model trained on the embedded task's ground truth."""

from __future__ import annotations

import random
import tempfile
import time

import deepspeed
import ray
import ray.train
from ray.train import Checkpoint
from transformers import AutoTokenizer

from configs.schema import Config
from models.logprobs import response_token_counts, sequence_logps
from models.packing import pad_sequences
from pipeline import task
from pipeline.tokenize import encode_prompt, encode_response
from training.engine import deepspeed_config, lr_at, set_lr, set_worker_threads, with_checkpointing
from training.model import build_model
from training.progress import Progress

LOG_EVERY = 25  # the loss shown is the mean of the last LOG_EVERY steps


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
