"""Comparison 1: the project's train job (Ray Train + DeepSpeed, DPO loss) beside TRL's DPOTrainer, and the
train job's precision table.

Same model (SmolLM2), same prepared pairs (prompt + response truncated to ``model.max_length`` keeping the
start, as TRL does), batch 8, the same optimizer steps timed after the same warm-up, the same two threads
(TRL: one process with 2 threads; ours: 2 Ray Train workers with 1 thread each), LoRA rank 16 on every linear
layer on both sides, reference log-probs precomputed on both sides, bf16 on both sides (TRL: the Trainer's
autocast; ours: DeepSpeed bf16 with fp32 master weights). The project's job also runs with full fine-tuning
and in fp32, each against reference log-probs of its own precision, for the fp32-against-bf16 table; the
fraction of the limit counts the tokens the forward pass computes (a shared prompt once).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from benchmarks.common import bench_vocab, ensure_model, fresh, limit_tokens_per_second, matmul_flops, parameters
from configs.schema import Config
from orchestration.prepare import run_prepare
from orchestration.train import run_train
from pipeline.shards import read_shards

PRECISIONS = ("bf16", "fp32")  # bf16 first: the comparison with TRL is bf16, and runs while the machine is coolest
METHODS = ("lora", "full")
FLOPS_PER_PARAMETER = {"lora": 4, "full": 6}


def trained_group_ids(job_dir: Path) -> set[int]:
    """The contrast groups the train job trained (its per-rank data logs)."""
    return {
        g
        for log in job_dir.glob("data_rank*.jsonl")
        for line in log.read_text().splitlines()
        for g in json.loads(line)["groups"]
    }


def export_pairs(shards_dir: Path, group_ids: set[int], path: Path) -> int:
    """The pairs of ``group_ids`` as TRL's ``{prompt, chosen, rejected}`` text rows."""
    rows = [r for r in read_shards(shards_dir).to_pylist() if r["group_id"] in group_ids]
    with open(path, "w") as f:
        for row in rows:
            texts = dict(zip(row["origins"], row["responses"]))
            f.write(
                json.dumps({"prompt": row["prompt"], "chosen": texts["chosen"], "rejected": texts["rejected"]}) + "\n"
            )
    return len(rows)


def timed_steps(metrics_csv: Path, warmup: int) -> pd.DataFrame:
    """The per-step metrics of the steps after the warm-up."""
    metrics = pd.read_csv(metrics_csv)
    return metrics[metrics["step"] > warmup]


def step_rates(metrics_csv: Path, warmup: int) -> dict:
    """Seconds, tokens/s (unpacked and computed) and peak RSS of the timed steps."""
    steps = timed_steps(metrics_csv, warmup)
    seconds = float(steps["seconds"].sum())

    def rate(column: str) -> float:
        return float((steps[column] * steps["seconds"]).sum()) / seconds

    return {
        "timed_steps": len(steps),
        "seconds": seconds,
        "tokens_per_second": rate("tokens_per_second"),
        "computed_tokens_per_second": rate("computed_tokens_per_second"),
        "peak_rss_mb": float(steps["worker_peak_rss_mb"].max()),
    }


def precision_config(cfg: Config, out: Path, dtype: str, method: str) -> Config:
    """``cfg`` with every log-prob in ``dtype`` (its own shards: reference log-probs in the trainer's precision)."""
    return cfg.model_copy(
        update={
            "output_dir": str(out / f"train_{dtype}"),
            "model": cfg.model.model_copy(update={"dtype": dtype}),
            "train": cfg.train.model_copy(
                update={
                    "deepspeed": cfg.train.deepspeed.model_copy(update={"dtype": dtype}),
                    "lora": cfg.train.lora if method == "lora" else None,
                }
            ),
        }
    )


def run(cfg: Config, out: Path, smoke: bool) -> dict:
    tc = cfg.train
    model_dir = ensure_model(cfg, bench_vocab(smoke))
    n_params = parameters(model_dir)
    threads = int(tc.cpus_per_worker) * (tc.num_workers if isinstance(tc.num_workers, int) else tc.num_workers[1])
    peak = matmul_flops(threads)
    pairs_per_step = tc.batch_groups * cfg.prepare.grouping.group_size
    fresh(Path(cfg.ray.storage_path), *(out / f"train_{d}" for d in PRECISIONS))
    runs, prepared = {}, {}
    for dtype in PRECISIONS:
        for method in METHODS:
            pcfg = precision_config(cfg, out, dtype, method)
            if dtype not in prepared:
                prepared[dtype] = run_prepare(pcfg)
            report = run_train(pcfg, job=f"dpo_{method}")
            r = step_rates(Path(report["metrics_csv"]), tc.warmup_steps)
            limit = limit_tokens_per_second(peak, n_params, FLOPS_PER_PARAMETER[method])
            runs[f"{method}_{dtype}"] = {
                **r,
                "samples_per_second": r["timed_steps"] * pairs_per_step / r["seconds"],
                "limit_tokens_per_second": limit,
                "limit_fraction": r["computed_tokens_per_second"] / limit,
            }
            print(
                f"[bench] project {method} {dtype}: {runs[f'{method}_{dtype}']['samples_per_second']:.2f} samples/s, "
                f"{r['computed_tokens_per_second']:.0f} computed tok/s = "
                f"{runs[f'{method}_{dtype}']['limit_fraction']:.1%} of the limit",
                flush=True,
            )
    project = runs[f"lora_{PRECISIONS[0]}"]

    bf16_cfg = precision_config(cfg, out, PRECISIONS[0], "lora")
    pairs = out / "trl_pairs.jsonl"
    # TRL trains one epoch over exactly the pairs our job trained: the same work, in another order.
    export_pairs(Path(prepared[PRECISIONS[0]]["shards_dir"]), trained_group_ids(bf16_cfg.job_dir("dpo_lora")), pairs)
    result = out / "trl_result.json"
    lora = tc.lora
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.trl_dpo",
        "--model",
        str(model_dir),
        "--pairs",
        str(pairs),
        "--steps",
        str(project["timed_steps"]),
        "--warmup",
        str(tc.warmup_steps),
        "--batch",
        str(pairs_per_step),
        "--max-length",
        str(cfg.model.max_length),
        "--lr",
        str(tc.lr),
        "--beta",
        str(tc.beta),
        "--threads",
        str(threads),
        "--bf16",
        "--lora-rank",
        str(lora.rank),
        "--lora-alpha",
        str(lora.alpha),
        "--out",
        str(result),
    ]
    print(f"[bench] TRL DPOTrainer: {' '.join(cmd[2:])}", flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    trl = json.loads(result.read_text())
    trl["limit_fraction"] = trl["tokens_per_second"] / limit_tokens_per_second(
        peak, n_params, FLOPS_PER_PARAMETER["lora"]
    )
    return {
        "model_max_length": cfg.model.max_length,
        "batch_pairs": pairs_per_step,
        "parameters": n_params,
        "rows_prepared": prepared[PRECISIONS[0]]["rows_out"],
        "truncated_responses": prepared[PRECISIONS[0]]["truncated_responses"],
        "matmul_flops": peak,
        "threads": threads,
        "project": project,
        "precision": runs,
        "trl": trl,
        "train_vs_trl_ratio": project["samples_per_second"] / trl["samples_per_second"],
        "tokens_per_second_ratio": project["tokens_per_second"] / trl["tokens_per_second"],
        "train_limit_fraction": project["limit_fraction"],
    }
