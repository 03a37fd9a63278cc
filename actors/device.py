"""The one device rule: a model-owning actor or training worker runs on the accelerator Ray assigned to it, and on
the CPU when it has none; models run in bf16 on a GPU and in fp32 on the CPU unless the config says otherwise."""

from __future__ import annotations

from collections.abc import Sequence

import ray
import torch

from configs.base import resolve_dtype

CPU = torch.device("cpu")


def device_for(gpu_ids: Sequence) -> torch.device:
    """The device of a process Ray gave ``gpu_ids`` (``ray.get_gpu_ids()``). Ray sets ``CUDA_VISIBLE_DEVICES`` to
    exactly those GPUs, so the first visible one is the process's own (with a fractional GPU, its share of it)."""
    return torch.device("cuda", 0) if len(gpu_ids) else CPU


def assigned_device() -> torch.device:
    """This actor's device under the rule (outside Ray Train; its workers ask ``ray.train.torch.get_device()``)."""
    return device_for(ray.get_gpu_ids() if ray.is_initialized() else [])  # outside Ray: no assignment, the CPU


def load_on_device(auto_class, model_dir: str, dtype: str, device: torch.device | None = None):
    """``auto_class.from_pretrained(model_dir)`` in the rule's precision, on ``device`` (default: this actor's)."""
    device = device or assigned_device()
    return auto_class.from_pretrained(model_dir, dtype=model_dtype(dtype, device)).to(device)


def model_dtype(setting: str, device: torch.device) -> torch.dtype:
    """``setting`` in torch's words, by :func:`configs.base.resolve_dtype` on ``device``."""
    return {"bf16": torch.bfloat16, "fp32": torch.float32}[resolve_dtype(setting, device.type != CPU.type)]


def vllm_dtype(setting: str, device: torch.device) -> str:
    """The same rule in vLLM's words ('bfloat16', 'float32')."""
    return str(model_dtype(setting, device)).removeprefix("torch.")
