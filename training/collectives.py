"""Sums and unions over the ranks of a Ray Train worker group (or this process alone, outside one)."""

from __future__ import annotations

import ray.train
import torch
import torch.distributed as dist


def all_sum(values: list[float], op=dist.ReduceOp.SUM) -> list[float]:
    """Sums (or ``op``) over the ranks, on the device the process group reduces on (NCCL: the worker's GPU)."""
    t = torch.tensor(
        values, dtype=torch.float64, device=ray.train.torch.get_device() if dist.is_initialized() else None
    )
    if dist.is_initialized():
        dist.all_reduce(t, op=op)
    return t.tolist()


def gathered(record: dict) -> dict:
    """The union over ranks of each rank's part of ``record``."""
    if not dist.is_initialized():
        return record
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, record)
    return {k: v for part in parts for k, v in part.items()}
