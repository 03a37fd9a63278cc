"""Comparison 5: training worker memory as the dataset grows.

The train job (DPO, the bench model) runs the same steps on shards of the demo's size (2,048 prompts) and of
eight times that size: copies of comparison 1's prepared UltraFeedback pairs under new group ids (what is in a
row does not matter for what a worker holds). Workers read only their own groups from the shards, so their
peak RSS should not grow with the data; the ratio reported is 8x over 1x.
"""
from __future__ import annotations

import math
from pathlib import Path

import pyarrow.parquet as pq

from benchmarks.common import bench_vocab, ensure_model, fresh
from benchmarks.train_vs_trl import timed_steps
from configs.schema import Config
from pipeline.graph import run_prepare
from pipeline.shards import Manifest, verified_shard_files
from training.train import run_train

DEMO_PROMPTS = 2048
SCALES = (1, 8)


def replicate(shards: Path, copies: int, out: Path) -> int:
    """``copies`` copies of the shards in ``out`` (group ids offset per copy, one shard file per source shard and
    copy); returns the rows written."""
    files = verified_shard_files(shards)
    tables = [pq.read_table(f).to_pandas() for f in files]
    span = 1 + max(int(t["group_id"].max()) for t in tables)
    manifest, _ = Manifest.open(out, f"replicated-{copies}x-{shards.resolve()}")
    manifest.total_shards = copies * len(tables)
    rows = 0
    for c in range(copies):
        for i, table in enumerate(tables):
            part = table.assign(group_id=table["group_id"] + c * span, id=table["id"] + f"#{c}")
            manifest.add(c * len(tables) + i, part, {})
            rows += len(part)
    return rows


def run(cfg: Config, out: Path, smoke: bool) -> dict:
    ensure_model(cfg, bench_vocab(smoke))
    prep = run_prepare(cfg)  # comparison 1's shards, reused when they are there
    base = math.ceil((64 if smoke else DEMO_PROMPTS) / prep["rows_out"])
    per_scale = {}
    for scale in SCALES:
        run_dir = out / f"memory_x{scale}"
        fresh(run_dir)
        rows = replicate(Path(prep["shards_dir"]), base * scale, run_dir / "prepare" / "shards")
        # its own storage too: a re-run of the benchmark must measure a run from scratch, not restore the last one
        scfg = cfg.model_copy(update={"output_dir": str(run_dir),
                                      "ray": cfg.ray.model_copy(update={"storage_path": str((run_dir / "ray").resolve())})})
        report = run_train(scfg, job="train")
        steps = timed_steps(Path(report["metrics_csv"]), cfg.train.warmup_steps)
        seconds = float(steps["seconds"].sum())
        per_scale[scale] = {"rows": rows, "worker_peak_rss_mb": float(steps["worker_peak_rss_mb"].max()),
                            "tokens_per_second": float((steps["tokens_per_second"] * steps["seconds"]).sum()) / seconds}
        print(f"[bench] {rows} rows: worker peak RSS {per_scale[scale]['worker_peak_rss_mb']:.0f} MB, "
              f"{per_scale[scale]['tokens_per_second']:.0f} tokens/s", flush=True)
    return {"per_scale": {str(k): v for k, v in per_scale.items()},
            "train_worker_rss_ratio": per_scale[8]["worker_peak_rss_mb"] / per_scale[1]["worker_peak_rss_mb"]}
