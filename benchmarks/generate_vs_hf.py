"""Comparison 3: the prepare job's autoregressive stage (vLLM actor) beside ``transformers`` ``generate``.

Same model (SmolLM2), prompts (the embedded task's, in chat form), samples per prompt, sampling settings, token
limit and precision (``model.vllm_dtype``); both compute on all the machine's cores (``prepare.generator_cpu_bind``).
Engine start is reported apart. The sampling limit is the bf16 matmul roofline: the measured FLOP/s over
2 x parameters FLOPs per token; the fraction of it counts each prompt once and every sampled token.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from actors.device import CPU, model_dtype
from benchmarks.common import bench_vocab, ensure_model, fresh, limit_tokens_per_second, matmul_flops, parameters
from configs.schema import Config
from orchestration.prepare import run_prepare
from pipeline.shards import read_shards

THREADS = os.cpu_count()
# vLLM-CPU's 'auto' binding would compute on one core and leave the other to its front-end: bind all.
OVERRIDES = [
    "data.source=null",
    "task.form=chat",
    "task.families=[add_digits, copy]",
    "task.n_train=400",
    "task.n_heldout=160",
    "model.max_length=128",
    "prepare.max_rows=128",
    "prepare.reward=none",
    "prepare.ref_logps=false",
    "prepare.negatives.autoregressive=4",
    "prepare.negatives.max_tokens=48",
    "prepare.batch_size=64",
    f"prepare.generator_cpu_bind=0-{THREADS - 1}",
    f"prepare.generator_cpus={THREADS}",
]
HF_BATCH_PROMPTS = 32  # prompts per generate call (x samples per prompt sequences)


@torch.no_grad()
def hf_generate(model_dir: str, prompts: list[list[int]], cfg: Config, threads: int) -> dict:
    """Batched, left-padded sampling with the same settings; tokens counted up to each sample's EOS."""
    neg = cfg.prepare.negatives
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=model_dtype(cfg.vllm_dtype(), CPU)).eval()
    start_seconds = time.perf_counter() - started
    torch.manual_seed(cfg.seed)
    generated, started = 0, time.perf_counter()
    for i in range(0, len(prompts), HF_BATCH_PROMPTS):
        chunk = prompts[i : i + HF_BATCH_PROMPTS]
        width = max(len(p) for p in chunk)
        ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in chunk])
        out = model.generate(
            ids,
            attention_mask=(ids != tokenizer.pad_token_id).long(),
            do_sample=True,
            temperature=neg.temperature,
            top_k=neg.top_k if neg.top_k > 0 else None,
            top_p=neg.top_p,
            num_return_sequences=neg.autoregressive,
            max_new_tokens=min(neg.max_tokens, cfg.model.max_length - width),
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        for seq in out[:, width:].tolist():
            generated += seq.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in seq else len(seq)
    seconds = time.perf_counter() - started
    torch.set_num_threads(before)
    return {
        "dtype": str(model.dtype),
        "engine_start_seconds": start_seconds,
        "seconds": seconds,
        "generated_tokens": generated,
        "tokens_per_second": generated / seconds,
        "batch_prompts": HF_BATCH_PROMPTS,
    }


def run(cfg: Config, out: Path, smoke: bool) -> dict:
    model_dir = ensure_model(cfg, bench_vocab(smoke))
    threads = THREADS
    fresh(cfg.job_dir("prepare"))
    prep = run_prepare(cfg)
    seconds = prep["seconds_per_stage"]["autoregressive"]
    vllm = {
        "engine_start_seconds": prep["generator_start_seconds"],
        "seconds": seconds,
        "generated_tokens": prep["generated_tokens"],
        "tokens_per_second": prep["generated_tokens"] / seconds,
    }
    prompts = [list(p) for p in read_shards(prep["shards_dir"]).column("prompt_ids").to_pylist()]
    prompt_tokens = sum(len(p) for p in prompts)  # prefilled once per prompt on both sides (its samples share it)
    hf = hf_generate(str(model_dir), prompts, cfg, threads)
    n_params = parameters(model_dir)
    flops = matmul_flops(threads)
    limit = limit_tokens_per_second(flops, n_params, 2)
    return {
        "prompts": len(prompts),
        "samples_per_prompt": cfg.prepare.negatives.autoregressive,
        "max_tokens": cfg.prepare.negatives.max_tokens,
        "threads": threads,
        "dtype": cfg.vllm_dtype(),
        "parameters": n_params,
        "matmul_flops": flops,
        "sampling_limit_tokens_per_second": limit,
        "project_vllm": vllm,
        "hf_generate": hf,
        "generate_vs_hf_ratio": vllm["tokens_per_second"] / hf["tokens_per_second"],
        "prompt_tokens": prompt_tokens,
        "sampling_limit_fraction": (prompt_tokens + vllm["generated_tokens"]) / vllm["seconds"] / limit,
        "hf_sampling_limit_fraction": (prompt_tokens + hf["generated_tokens"]) / hf["seconds"] / limit,
    }
