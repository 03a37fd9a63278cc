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
    from configs.data import ModelConfig
    from training.model import build_model, build_tokenizer

    path = tmp_path_factory.mktemp("tiny_model")
    tokenizer = build_tokenizer(max_length=128)
    model = build_model(
        ModelConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128, max_length=128), tokenizer, seed=0
    )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def smollm2_cache(tmp_path_factory) -> Path:
    """A model cache (``model.cache_dir``) holding SmolLM2-135M-Instruct converted from its packaged GGUF file, once
    per session."""
    from training.pretrained import convert_gguf, gguf_source

    cache = tmp_path_factory.mktemp("models")
    convert_gguf(gguf_source("smollm2-135m-instruct"), cache / "smollm2-135m-instruct")
    return cache


@pytest.fixture(scope="session")
def smollm2_dir(smollm2_cache) -> Path:
    return smollm2_cache / "smollm2-135m-instruct"


def run_job_console(job: str, out: Path, *overrides: str, config: str = "configs/tiny.yaml") -> tuple[dict, str]:
    """Run ``python -m jobs.<job>`` as a user would; its report and what its console showed."""
    import json
    import subprocess
    import sys

    sets = [arg for o in (f"output_dir={out}", *overrides) for arg in ("--set", o)]
    proc = subprocess.run(
        [sys.executable, "-m", f"jobs.{job}", "--config", config, *sets],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    if proc.returncode != 0:
        log = out / job / "logs" / f"{job}.log"
        raise AssertionError(
            f"{job} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}\n"
            + (f"end of {log}:\n{log.read_text()[-6000:]}" if log.is_file() else "")
        )
    return json.loads((out / job / "report.json").read_text()), proc.stdout


def run_job(job: str, out: Path, *overrides: str, config: str = "configs/tiny.yaml") -> dict:
    """Run ``python -m jobs.<job>`` as a user would and return its report."""
    return run_job_console(job, out, *overrides, config=config)[0]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> dict:
    """The tiny config's reference model and prepared shards (SFT + prepare jobs run for real), once per session."""
    out = tmp_path_factory.mktemp("tiny_run")
    return {"dir": out, "sft": run_job("sft", out), "prepare": run_job("prepare", out)}


@pytest.fixture
def tiny_copy(tiny_run, tmp_path) -> Path:
    """A private copy of the tiny run's reference and shards, for tests that train into it."""
    import shutil

    for job in ("sft", "prepare"):
        shutil.copytree(tiny_run["dir"] / job, tmp_path / job)
    return tmp_path


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 server (SeaweedFS) on localhost for the session: tests/s3_server.py."""
    from tests import s3_server as server

    running = server.start(tmp_path_factory.mktemp("seaweedfs"))
    yield running
    server.stop(running)
