"""Comparison 5: training worker memory as the dataset grows.

The train job (DPO, the random bench model) runs the same steps on shards of the demo's size (2,048 prompts) and of
eight times that size: copies of comparison 1's prepared UltraFeedback pairs under new group ids (what is in a
row does not matter for what a worker holds). Workers read only their own groups from the shards, so their
peak RSS should not grow with the data; the ratio reported is 8x over 1x. In the same run, the loader this
replaced (every worker holds every group, read up front) trains the same steps at both sizes, for the tokens/s
the addressed reader must not lose and the memory it used to take.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from benchmarks.common import bench_vocab, ensure_model, fresh
from benchmarks.train_vs_trl import timed_steps
from configs.schema import Config
from orchestration.prepare import run_prepare
from orchestration.train import run_train
from pipeline.shards import Manifest, read_manifest, verified_shard_files
from pipeline.storage import Store
from training.batches import pack_groups
from training.group_reader import GroupReader

RANDOM_MODEL = True  # worker memory as the data grows: the model's compute is not what it measures
DEMO_PROMPTS = 2048
SCALES = (1, 8)


class WholeDataset:
    """The trainer's loader before the addressed reader: all shards read into every worker and packed up front."""

    def __init__(self, files: list[Store], max_responses: int | None = None):
        rows = pd.concat([f.read_table().to_pandas() for f in files], ignore_index=True)
        self.groups = {g["group_id"]: g for g in pack_groups(rows, max_responses)}

    @property
    def group_ids(self) -> list[int]:
        return sorted(self.groups)

    def read(self, group_ids: list[int]) -> list[dict]:
        return [self.groups[g] for g in group_ids]


READERS = {"addressed": GroupReader, "whole_dataset": WholeDataset}


def replicate(shards: Path, copies: int, out: Path) -> int:
    """``copies`` copies of the shards in ``out`` (group ids offset per copy, one shard file per source shard and
    copy); returns the rows written."""
    files = verified_shard_files(shards)
    tables = [f.read_table().to_pandas() for f in files]
    span = 1 + max(int(t["group_id"].max()) for t in tables)
    manifest, _ = Manifest.open(out, f"replicated-{copies}x-{shards.resolve()}")
    manifest.total_shards = copies * len(tables)
    manifest.source = read_manifest(shards)["source"]  # the same records: the same provenance
    rows = 0
    for c in range(copies):
        for i, table in enumerate(tables):
            part = table.assign(group_id=table["group_id"] + c * span, id=table["id"] + f"#{c}")
            manifest.add(c * len(tables) + i, part, {})
            rows += len(part)
    return rows


def run(cfg: Config, out: Path, smoke: bool) -> dict:
    ensure_model(cfg, bench_vocab(smoke))
    prep = run_prepare(cfg)  # UltraFeedback pairs; reused when they are there
    base = math.ceil((64 if smoke else DEMO_PROMPTS) / prep["rows_out"])
    per_reader: dict[str, dict] = {name: {} for name in READERS}
    # At 1x each reader runs twice, in the order A B B A, so a drift in the machine's speed over the runs (the first
    # run of a fresh cluster is the slowest) falls on both; tokens/s is the mean of the two.
    for scale, name in [
        (1, "addressed"),
        (1, "whole_dataset"),
        (1, "whole_dataset"),
        (1, "addressed"),
        (8, "addressed"),
        (8, "whole_dataset"),
    ]:
        run_dir = out / f"memory_x{scale}_{name}"
        fresh(run_dir)
        rows = replicate(Path(prep["shards_dir"]), base * scale, run_dir / "prepare" / "shards")
        # its own storage too: a re-run of the benchmark must measure a run from scratch, not restore the last one
        scfg = cfg.model_copy(
            update={
                "output_dir": str(run_dir),
                "ray": cfg.ray.model_copy(update={"storage_path": str((run_dir / "ray").resolve())}),
            }
        )
        report = run_train(scfg, job="train", reader=READERS[name])
        steps = timed_steps(Path(report["metrics_csv"]), cfg.train.warmup_steps)
        tokens_per_second = float((steps["tokens_per_second"] * steps["seconds"]).sum()) / float(steps["seconds"].sum())
        print(
            f"[bench] {name} reader, {rows} rows: worker peak RSS {steps['worker_peak_rss_mb'].max():.0f} MB, "
            f"{tokens_per_second:.0f} tokens/s",
            flush=True,
        )
        s = per_reader[name].setdefault(
            str(scale), {"rows": rows, "worker_peak_rss_mb": 0.0, "runs_tokens_per_second": []}
        )
        s["worker_peak_rss_mb"] = max(s["worker_peak_rss_mb"], float(steps["worker_peak_rss_mb"].max()))
        s["runs_tokens_per_second"].append(tokens_per_second)
        s["tokens_per_second"] = sum(s["runs_tokens_per_second"]) / len(s["runs_tokens_per_second"])
    ours, before = per_reader["addressed"], per_reader["whole_dataset"]
    return {
        "per_scale": ours,
        "whole_dataset": before,
        "train_worker_rss_ratio": ours["8"]["worker_peak_rss_mb"] / ours["1"]["worker_peak_rss_mb"],
        "whole_dataset_rss_ratio": before["8"]["worker_peak_rss_mb"] / before["1"]["worker_peak_rss_mb"],
        "tokens_per_second_vs_whole_dataset": ours["1"]["tokens_per_second"] / before["1"]["tokens_per_second"],
    }
