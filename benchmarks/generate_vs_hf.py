"""Comparison 3: the prepare job's autoregressive stage (vLLM actor) beside ``transformers`` ``generate``.

Same model, prompts (the embedded task's), samples per prompt, sampling settings and token limit; both
compute on all the machine's cores (``prepare.generator_cpu_bind``). Engine start is reported apart.
The sampling limit is the matmul roofline: the measured FLOP/s over 2 x parameters FLOPs per token.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from benchmarks.common import bench_vocab, ensure_model, fresh, matmul_flops, parameters
from configs.schema import Config
from pipeline.graph import run_prepare
from pipeline.shards import read_shards

THREADS = os.cpu_count()
# vLLM-CPU's 'auto' binding would compute on one core and leave the other to its front-end: bind all.
OVERRIDES = ["data.source=null", "prepare.max_rows=256", "prepare.reward=none", "prepare.ref_logps=false",
             "prepare.negatives.autoregressive=4", "prepare.negatives.max_tokens=48", "prepare.batch_size=64",
             f"prepare.generator_cpu_bind=0-{THREADS - 1}", f"prepare.generator_cpus={THREADS}"]
HF_BATCH_PROMPTS = 32  # prompts per generate call (x samples per prompt sequences)


@torch.no_grad()
def hf_generate(model_dir: str, prompts: list[list[int]], cfg: Config, threads: int) -> dict:
    """Batched, left-padded sampling with the same settings; tokens counted up to each sample's EOS."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    neg = cfg.prepare.negatives
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    start_seconds = time.perf_counter() - started
    torch.manual_seed(cfg.seed)
    generated, started = 0, time.perf_counter()
    for i in range(0, len(prompts), HF_BATCH_PROMPTS):
        chunk = prompts[i : i + HF_BATCH_PROMPTS]
        width = max(len(p) for p in chunk)
        ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in chunk])
        out = model.generate(
            ids, attention_mask=(ids != tokenizer.pad_token_id).long(), do_sample=True, temperature=neg.temperature,
            top_k=neg.top_k if neg.top_k > 0 else None, top_p=neg.top_p, num_return_sequences=neg.autoregressive,
            max_new_tokens=min(neg.max_tokens, cfg.model.max_length - width), eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        for seq in out[:, width:].tolist():
            generated += seq.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in seq else len(seq)
    seconds = time.perf_counter() - started
    torch.set_num_threads(before)
    return {"engine_start_seconds": start_seconds, "seconds": seconds, "generated_tokens": generated,
            "tokens_per_second": generated / seconds, "batch_prompts": HF_BATCH_PROMPTS}


def run(cfg: Config, out: Path, smoke: bool) -> dict:
    model_dir = ensure_model(cfg, bench_vocab(smoke))
    threads = THREADS
    fresh(cfg.job_dir("prepare"))
    prep = run_prepare(cfg)
    seconds = prep["seconds_per_stage"]["autoregressive"]
    vllm = {"engine_start_seconds": prep["generator_start_seconds"], "seconds": seconds,
            "generated_tokens": prep["generated_tokens"], "tokens_per_second": prep["generated_tokens"] / seconds}
    prompts = [list(p) for p in read_shards(prep["shards_dir"]).column("prompt_ids").to_pylist()]
    hf = hf_generate(str(model_dir), prompts, cfg, threads)
    n_params = parameters(model_dir)
    flops = matmul_flops(threads)
    limit = flops / (2 * n_params)  # tokens/s if every FLOP went into the model's matmuls
    return {
        "prompts": len(prompts), "samples_per_prompt": cfg.prepare.negatives.autoregressive,
        "max_tokens": cfg.prepare.negatives.max_tokens, "threads": threads, "parameters": n_params,
        "matmul_flops": flops, "sampling_limit_tokens_per_second": limit, "project_vllm": vllm, "hf_generate": hf,
        "generate_vs_hf_ratio": vllm["tokens_per_second"] / hf["tokens_per_second"],
        "sampling_limit_fraction": vllm["tokens_per_second"] / limit,
        "hf_sampling_limit_fraction": hf["tokens_per_second"] / limit,
    }
