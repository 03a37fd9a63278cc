"""DeepSpeed set-up shared by the SFT and preference trainers (runs inside Ray Train workers)."""
from __future__ import annotations

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
    total_steps: int,
    warmup_steps: int,
) -> dict:
    """A DeepSpeed config: torch AdamW, linear warm-up then cosine decay, ZeRO stage and precision from ``ds``."""
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
        "scheduler": {
            "type": "WarmupCosineLR",
            "params": {
                "total_num_steps": max(total_steps, warmup_steps + 1),
                "warmup_num_steps": warmup_steps,
                "warmup_type": "linear",
                "cos_min_ratio": 0.1,
            },
        },
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def set_worker_threads(cpus_per_worker: float) -> None:
    """Give torch exactly the CPUs Ray reserved for this worker, so workers do not oversubscribe cores."""
    n = max(1, int(cpus_per_worker))
    torch.set_num_threads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)
