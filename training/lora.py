"""LoRA adapters (peft): which parameters train, and the merged policy users load afterwards."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from configs.train import LoraConfig


def with_lora(model: nn.Module, cfg: LoraConfig) -> nn.Module:
    """``model`` with LoRA adapters on ``cfg.target_modules``; only the adapters require gradients."""
    targets = cfg.target_modules if isinstance(cfg.target_modules, str) else list(cfg.target_modules)
    return get_peft_model(
        model,
        PeftLoraConfig(
            r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets, task_type="CAUSAL_LM"
        ),
    )


def export_merged(base_dir: Path, adapter_dir: Path, out: Path) -> None:
    """Merge the adapters into the base model and ``save_pretrained`` the result (with the tokenizer) to ``out``:
    a plain model directory that transformers and vLLM load."""
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    shutil.rmtree(out, ignore_errors=True)
    merged.save_pretrained(out)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out)
