"""DeepSpeed set-up shared by the SFT and preference trainers (runs inside Ray Train workers)."""

from __future__ import annotations

import math
import os

import torch
from ray.train import ScalingConfig
from ray.train.torch import TorchConfig
from transformers import AutoModelForCausalLM

from actors.device import model_dtype
from configs.train import DeepSpeedConfig


def deepspeed_config(
    ds: DeepSpeedConfig,
    *,
    micro_batch: int,
    grad_accum: int,
    world_size: int,
    lr: float,
    weight_decay: float,
    device: torch.device,
) -> dict:
    """A DeepSpeed config: torch AdamW, ZeRO stage and precision from ``ds`` (bf16 on ``device`` by the device rule).

    No DeepSpeed scheduler: the loops set the learning rate from the step number (:func:`lr_at`), so a
    run restored on a different number of workers keeps its schedule even when optimizer state cannot move.
    """
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": micro_batch * grad_accum * world_size,
        "gradient_clipping": ds.gradient_clipping,
        "zero_optimization": {"stage": ds.zero_stage},
        "bf16": {"enabled": model_dtype(ds.dtype, device) == torch.bfloat16},
        "optimizer": {
            "type": "AdamW",
            # torch_adam: DeepSpeed's fused CPU Adam needs a compiled op; torch's AdamW just works.
            "params": {"lr": lr, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": weight_decay, "torch_adam": True},
        },
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def trainer_resources(num_workers: int | tuple[int, int], cpus: float, gpus: float) -> dict:
    """``TorchTrainer`` arguments for workers of ``cpus`` CPUs and ``gpus`` GPUs each: NCCL between GPU workers,
    gloo between CPU workers."""
    return {
        "scaling_config": ScalingConfig(
            num_workers=num_workers,
            use_gpu=gpus > 0,
            resources_per_worker={"CPU": cpus, **({"GPU": gpus} if gpus else {})},
        ),
        "torch_config": TorchConfig(backend="nccl" if gpus else "gloo"),
    }


def load_for_training(model_dir, ds: DeepSpeedConfig, device: torch.device):
    """The model as a training worker starts it: in its training precision (DeepSpeed partitions it under ZeRO-3
    when the engine starts), activations recomputed in the backward pass with ``ds.gradient_checkpointing``."""
    return with_checkpointing(AutoModelForCausalLM.from_pretrained(model_dir, dtype=model_dtype(ds.dtype, device)), ds)


def with_checkpointing(model, ds: DeepSpeedConfig):
    """``model`` with activations recomputed in the backward pass when ``ds.gradient_checkpointing`` says so."""
    if ds.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return model


def lr_at(step: int, total: int, warmup: int, peak: float, floor: float = 0.1) -> float:
    """Linear warm-up to ``peak``, then cosine decay to ``floor * peak`` at ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def set_lr(engine, lr: float) -> None:
    for group in engine.optimizer.param_groups:
        group["lr"] = lr


def set_worker_threads(cpus_per_worker: float) -> None:
    """Give torch exactly the CPUs Ray reserved for this worker, so workers do not oversubscribe cores."""
    n = max(1, int(cpus_per_worker))
    torch.set_num_threads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)
