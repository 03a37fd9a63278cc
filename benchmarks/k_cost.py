"""Comparison 2: what a SWEPO step costs per response token as K (responses per prompt) grows.

The train job (SWEPO on SmolLM2, LoRA, bf16, the same shards of AlpacaEval best-of-16 groups truncated to
``model.max_length``, scored by the source) with ``train.max_responses`` = 2, 4, 8 and 11; the cost is seconds
per response token of the timed steps, reported relative to K = 2. One group per micro-batch, so a K = 11
micro-batch holds the same groups' worth of memory as a K = 2 one.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.common import bench_vocab, ensure_model, fresh
from benchmarks.train_vs_trl import timed_steps
from configs.schema import Config
from orchestration.prepare import run_prepare
from orchestration.train import run_train

KS = (2, 4, 8, 11)
OVERRIDES = [
    "data.source=../shared/data/alpacaeval_bo16_scored.jsonl.gz",
    "data.split=null",
    "prepare.reward=source",
    "prepare.max_rows=24",
    "train.loss=swepo",
    "train.steps=5",
    "train.batch_groups=2",
    "train.micro_groups=1",
]


def run(cfg: Config, out: Path, smoke: bool) -> dict:
    ensure_model(cfg, bench_vocab(smoke))
    fresh(cfg.job_dir("prepare"), Path(cfg.ray.storage_path))
    prep = run_prepare(cfg)
    per_k = {}
    for k in KS:
        job = f"swepo_k{k}"
        fresh(cfg.job_dir(job))
        kcfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_responses": k})})
        report = run_train(kcfg, job=job)
        steps = timed_steps(Path(report["metrics_csv"]), cfg.train.warmup_steps)
        seconds = float(steps["seconds"].sum())
        response_tokens = float((steps["response_tokens_per_second"] * steps["seconds"]).sum())
        per_k[k] = {
            "seconds": seconds,
            "response_tokens": response_tokens,
            "seconds_per_response_token": seconds / response_tokens,
            "peak_rss_mb": float(steps["worker_peak_rss_mb"].max()),
        }
        print(f"[bench] K={k}: {per_k[k]['seconds_per_response_token'] * 1e3:.3f} ms per response token", flush=True)
    base = per_k[KS[0]]["seconds_per_response_token"]
    for k in KS:
        per_k[k]["cost_vs_k2"] = per_k[k]["seconds_per_response_token"] / base
    return {
        "rows_prepared": prep["rows_out"],
        "truncated_responses": prep["truncated_responses"],
        "per_k": {str(k): v for k, v in per_k.items()},
        "k11_vs_k2_cost_ratio": per_k[KS[-1]]["cost_vs_k2"],
    }
