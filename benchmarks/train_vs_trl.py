"""Comparison 1: the project's train job (Ray Train + DeepSpeed, DPO loss) beside TRL's DPOTrainer.

Same model, same prepared pairs (prompt + response truncated to ``model.max_length`` keeping the start,
as TRL does), batch 8, the same optimizer steps timed after the same warm-up, the same two threads
(TRL: one process with 2 threads; ours: 2 Ray Train workers with 1 thread each).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from benchmarks.common import bench_vocab, ensure_model, fresh
from configs.schema import Config
from pipeline.graph import run_prepare
from pipeline.shards import read_shards
from training.train import run_train


def trained_group_ids(job_dir: Path) -> set[int]:
    """The contrast groups the train job trained (its per-rank data logs)."""
    return {g for log in job_dir.glob("data_rank*.jsonl") for line in log.read_text().splitlines()
            for g in json.loads(line)["groups"]}


def export_pairs(shards_dir: Path, group_ids: set[int], path: Path) -> int:
    """The pairs of ``group_ids`` as TRL's ``{prompt, chosen, rejected}`` text rows."""
    rows = [r for r in read_shards(shards_dir).to_pylist() if r["group_id"] in group_ids]
    with open(path, "w") as f:
        for row in rows:
            texts = dict(zip(row["origins"], row["responses"]))
            f.write(json.dumps({"prompt": row["prompt"], "chosen": texts["chosen"], "rejected": texts["rejected"]}) + "\n")
    return len(rows)


def timed_steps(metrics_csv: Path, warmup: int) -> pd.DataFrame:
    """The per-step metrics of the steps after the warm-up."""
    metrics = pd.read_csv(metrics_csv)
    return metrics[metrics["step"] > warmup]


def run(cfg: Config, out: Path, smoke: bool) -> dict:
    tc = cfg.train
    ensure_model(cfg, bench_vocab(smoke))
    fresh(cfg.job_dir("prepare"), cfg.job_dir("train_dpo"), Path(cfg.ray.storage_path))
    prep = run_prepare(cfg)
    ours = run_train(cfg, job="train_dpo")
    steps = timed_steps(Path(ours["metrics_csv"]), tc.warmup_steps)
    seconds = float(steps["seconds"].sum())
    pairs_per_step = tc.batch_groups * cfg.prepare.grouping.group_size
    project = {
        "workers": tc.num_workers, "threads_per_worker": int(tc.cpus_per_worker), "timed_steps": len(steps),
        "seconds": seconds, "samples_per_second": len(steps) * pairs_per_step / seconds,
        "tokens_per_second": float((steps["tokens_per_second"] * steps["seconds"]).sum()) / seconds,
        "peak_rss_mb": float(steps["worker_peak_rss_mb"].max()),
    }

    pairs = out / "trl_pairs.jsonl"
    # TRL trains one epoch over exactly the pairs our job trained: the same work, in another order.
    export_pairs(Path(prep["shards_dir"]), trained_group_ids(cfg.job_dir("train_dpo")), pairs)
    threads = int(tc.cpus_per_worker) * (tc.num_workers if isinstance(tc.num_workers, int) else tc.num_workers[1])
    result = out / "trl_result.json"
    cmd = [sys.executable, "-m", "benchmarks.trl_dpo", "--model", cfg.model.policy_dir, "--pairs", str(pairs),
           "--steps", str(len(steps)), "--warmup", str(tc.warmup_steps), "--batch", str(pairs_per_step),
           "--max-length", str(cfg.model.max_length), "--lr", str(tc.lr), "--beta", str(tc.beta),
           "--threads", str(threads), "--out", str(result)]
    print(f"[bench] TRL DPOTrainer: {' '.join(cmd[2:])}", flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    trl = json.loads(result.read_text())
    return {
        "model_max_length": cfg.model.max_length, "batch_pairs": pairs_per_step, "rows_prepared": prep["rows_out"],
        "truncated_responses": prep["truncated_responses"], "project": project, "trl": trl,
        "train_vs_trl_ratio": project["samples_per_second"] / trl["samples_per_second"],
        "tokens_per_second_ratio": project["tokens_per_second"] / trl["tokens_per_second"],
    }
