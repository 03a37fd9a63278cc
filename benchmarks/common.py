"""What the comparisons share: the benchmark models, the config, the matmul roofline and its limits."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from configs.schema import Config, load_config
from jobs import common as jobs_common
from pipeline.sources import read_source
from training.model import build_model, build_tokenizer, is_saved_model

CONFIG = "configs/bench.yaml"
BPE_VOCAB, SMOKE_VOCAB = 16384, 1024  # the random model's vocabulary (see ensure_model)
CORPUS = ("../shared/data/ultrafeedback_binarized_1200.jsonl.gz", "../shared/data/alpacaeval_bo16_scored.jsonl.gz")
# The random-weight model (7.6M parameters) of the comparisons that measure how memory and time scale with the data
# rather than the model's compute (a module says so with RANDOM_MODEL = True), in fp32 and without LoRA.
RANDOM_SHAPE = ["model.hidden_size=256", "model.num_layers=4", "model.num_heads=4", "model.intermediate_size=768"]
RANDOM_PRECISION = ["model.dtype=fp32", "model.vllm_dtype=fp32", "train.deepspeed.dtype=fp32", "train.lora=null"]
# --smoke: the same code paths at toy size (a 2-layer random model, a handful of steps and rows).
SMOKE_OVERRIDES = [
    "model.hidden_size=64",
    "model.num_layers=2",
    "model.num_heads=2",
    "model.intermediate_size=128",
    "prepare.max_rows=40",
    "train.steps=3",
    "train.warmup_steps=1",
    "train.heldout_fraction=0.1",
    "train.max_failures=0",
]
PEAK_DTYPE = torch.bfloat16  # the limit every stage is measured against: this CPU's bf16 matmul rate


def bench_config(out_dir: Path, smoke: bool, overrides: list[str] = (), random_model: bool = False) -> Config:
    """configs/bench.yaml (SmolLM2) with ``overrides``; the random model instead with ``random_model`` or ``smoke``."""
    sets = [f"output_dir={out_dir}", f"ray.storage_path={(out_dir / 'ray').resolve()}"]
    if random_model or smoke:
        sets += ["model.gguf_file=null", f"model.policy_dir={out_dir / 'model'}", *RANDOM_SHAPE]
    if random_model:
        sets += RANDOM_PRECISION
    return load_config(CONFIG, [*sets, *overrides, *(SMOKE_OVERRIDES if smoke else [])])


def bench_vocab(smoke: bool) -> int:
    return SMOKE_VOCAB if smoke else BPE_VOCAB


def corpus() -> list[str]:
    """Prompts and responses of the benchmarks' real data: what the benchmark tokenizer learns its merges from."""
    texts = []
    for path in CORPUS:
        table, _ = read_source(path, on_bad_row="skip")
        for row in table.select(["prompt", "responses"]).to_pylist():
            texts += [row["prompt"], *row["responses"]]
    return texts


def ensure_model(cfg: Config, vocab_size: int | None = None) -> Path:
    """The benchmark model's directory: SmolLM2 converted from its GGUF file (``model.gguf_file``), or a random-weight
    model built once per shape (throughput does not depend on the weights).

    ``vocab_size``: the random model's byte-level BPE vocabulary of that size learned from :func:`corpus`, as real
    small models have (the vocabulary projection is then a large part of the work); None: the project's byte-level
    tokenizer with no merges.
    """
    if cfg.model.gguf_file is not None:
        jobs_common.ensure_model(cfg)
        return cfg.policy_dir()
    path = Path(cfg.model.policy_dir)
    stamp = path / "shape.json"
    shape = json.dumps({"model": cfg.model.model_dump(mode="json"), "vocab_size": vocab_size})
    if not (is_saved_model(path) and stamp.is_file() and stamp.read_text() == shape):
        shutil.rmtree(path, ignore_errors=True)
        tokenizer = build_tokenizer(cfg.model.max_length, corpus() if vocab_size else None, vocab_size or 0)
        build_model(cfg.model, tokenizer, cfg.seed).save_pretrained(path)
        tokenizer.save_pretrained(path)
        stamp.write_text(shape)
    return path


def parameters(model_dir: Path) -> int:
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    return sum(p.numel() for p in model.parameters())


def matmul_flops(threads: int, dtype: torch.dtype = PEAK_DTYPE, n: int = 2048, seconds: float = 2.0) -> float:
    """Measured ``dtype`` matmul FLOP/s of ``n x n`` matrices on ``threads`` threads: the roofline of the limits."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        runs += 1
    elapsed = time.perf_counter() - started
    torch.set_num_threads(before)
    return 2 * n**3 * runs / elapsed


def limit_tokens_per_second(peak_flops: float, parameters: int, flops_per_parameter: int) -> float:
    """Tokens/s if every FLOP of the peak went into the model's matmuls: ``flops_per_parameter`` is 2 for a forward
    pass (sampling, scoring), 6 for full training and 4 for LoRA (no weight gradients of the frozen base)."""
    return peak_flops / (flops_per_parameter * parameters)


def fresh(*paths: Path) -> None:
    """Remove earlier results, so every comparison measures a run from scratch (no reuse, no restore)."""
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)
