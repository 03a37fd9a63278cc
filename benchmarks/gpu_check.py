"""``make gpu-check``: ``configs/gpu_single.yaml`` end to end on this machine's GPU (SFT -> prepare -> train ->
evaluate), then the throughput of each stage: vLLM generated tokens/s, embeddings/s, reference log-prob tokens/s,
training tokens/s and its fraction of the GPU's bf16 matmul peak (measured here), in
``runs/gpu_single/gpu_check.json``. On a machine without a GPU it says so and exits 0.

``python -m benchmarks.gpu_check --summarize --config configs/demo.yaml`` gives the same figures for a run already
made (the CPU demo, for the comparison), without running anything.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import pandas as pd
import pyarrow.compute as pc
import torch

from configs.schema import Config, load_config
from jobs import run as run_job
from pipeline.shards import verified_shard_files

CONFIG = "configs/gpu_single.yaml"


def bf16_matmul_flops(n: int = 8192, repeats: int = 20) -> float:
    """FLOP/s of a large bf16 matmul on the current GPU: the peak training is measured against."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    a @ b  # warm-up (kernel selection)
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * repeats / (time.perf_counter() - started)


def stage_throughput(cfg: Config, peak_flops: float | None = None) -> dict:
    """Per-stage rates of the run ``cfg`` describes, from its reports, shards and training metrics. Stage seconds
    are the actors' busy time (summed over actors), so a rate is per actor."""
    prep = json.loads((cfg.job_dir("prepare") / "report.json").read_text())
    train = json.loads((cfg.job_dir("train") / "report.json").read_text())
    seconds = prep["seconds_per_stage"]
    shards = [
        f.read_table(columns=["prompt_ids", "response_ids"])
        for f in verified_shard_files(cfg.job_dir("prepare") / "shards")
    ]
    prompts = sum(t.num_rows for t in shards)
    responses = sum(int(pc.sum(pc.list_value_length(t["response_ids"])).as_py()) for t in shards)
    response_tokens = sum(int(pc.sum(pc.list_value_length(pc.list_flatten(t["response_ids"]))).as_py()) for t in shards)
    prompt_tokens = sum(int(pc.sum(pc.list_value_length(t["prompt_ids"])).as_py()) for t in shards)
    steps = pd.read_csv(train["metrics_csv"]).drop_duplicates("step", keep="last").iloc[cfg.train.warmup_steps :]
    train_tps = float((steps["tokens_per_second"] * steps["seconds"]).sum() / steps["seconds"].sum())
    embedded = prompts + (responses if cfg.prepare.embed_responses else 0)
    embed_seconds = seconds.get("embed_prompts", 0.0) + seconds.get("embed_responses", 0.0)
    out = {
        "vllm_generated_tokens_per_second": prep["generation_tokens_per_second"],
        "embeddings_per_second": embedded / embed_seconds if embed_seconds else None,
        # each prompt is forwarded once with its responses (packed), so the work is prompt + response tokens
        "reference_logprob_tokens_per_second": (prompt_tokens + response_tokens) / seconds["ref_logps"]
        if seconds.get("ref_logps")
        else None,
        "training_tokens_per_second": train_tps,
        "trainable_parameters": train["trainable_parameters"],
        "prepare_wall_seconds": prep["wall_seconds"],
        "train_wall_seconds": train["wall_seconds"],
    }
    if peak_flops:
        # forward + backward: about 6 FLOPs per parameter per token (attention's share is small at these lengths)
        out["bf16_matmul_peak_flops"] = peak_flops
        out["training_fraction_of_bf16_peak"] = 6 * train["trainable_parameters"] * train_tps / peak_flops
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=CONFIG)
    ap.add_argument("--summarize", action="store_true", help="only compute the figures of a run already made")
    args, rest = ap.parse_known_args(sys.argv[1:] if argv is None else argv)
    cfg = load_config(args.config)
    if args.summarize:
        figures = stage_throughput(cfg)
    else:
        if not torch.cuda.is_available():
            print(
                "[gpu-check] no GPU here (torch sees no CUDA device): nothing to check. On a GPU machine: "
                "make gpu-check EXTRA=gpu",
                flush=True,
            )
            return {}
        peak = bf16_matmul_flops()
        run_job.main(["--config", args.config, *rest])
        figures = {"gpu": torch.cuda.get_device_name(), **stage_throughput(cfg, peak)}
    path = cfg.job_dir("gpu_check.json")
    path.write_text(json.dumps(figures, indent=2))
    for key, value in figures.items():
        print(f"[gpu-check] {key:<38} {value:,.3f}" if isinstance(value, float) else f"[gpu-check] {key:<38} {value}")
    print(f"[gpu-check] written to {path}", flush=True)
    return figures


if __name__ == "__main__":
    main()
