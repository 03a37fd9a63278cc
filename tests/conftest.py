"""Shared fixtures: a tiny from-scratch reference model saved like the SFT job saves it."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

# vLLM on CPU: a small KV cache is plenty for tiny models and keeps tests within memory.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """An untrained 2-layer Llama with the project's tokenizer (head_dim 32, as vLLM-CPU needs)."""
    from configs.schema import ModelConfig
    from training.model import build_model, build_tokenizer

    path = tmp_path_factory.mktemp("tiny_model")
    tokenizer = build_tokenizer(max_length=128)
    model = build_model(
        ModelConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128, max_length=128), tokenizer, seed=0
    )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
