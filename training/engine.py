"""DeepSpeed set-up shared by the SFT and preference trainers (runs inside Ray Train workers)."""
from __future__ import annotations

import math
import os

import torch

from configs.schema import DeepSpeedConfig


def deepspeed_config(
    ds: DeepSpeedConfig,
    *,
    micro_batch: int,
    grad_accum: int,
    world_size: int,
    lr: float,
    weight_decay: float,
) -> dict:
    """A DeepSpeed config: torch AdamW, ZeRO stage and precision from ``ds``.

    No DeepSpeed scheduler: the loops set the learning rate from the step number (:func:`lr_at`), so a
    run restored on a different number of workers keeps its schedule even when optimizer state cannot move.
    """
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": micro_batch * grad_accum * world_size,
        "gradient_clipping": ds.gradient_clipping,
        "zero_optimization": {"stage": ds.zero_stage},
        "bf16": {"enabled": ds.dtype == "bf16"},
        "optimizer": {
            "type": "AdamW",
            # torch_adam: DeepSpeed's fused CPU Adam needs a compiled op; torch's AdamW just works.
            "params": {"lr": lr, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": weight_decay, "torch_adam": True},
        },
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


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
