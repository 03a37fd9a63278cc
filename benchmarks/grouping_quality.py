"""Comparison 7: how related the prompts of a contrast group are, bucketed grouping against the exact greedy one.

Mean within-group cosine similarity of prompt embeddings (all-MiniLM-L6-v2, as the prepare job embeds them) on
the demo task's training prompts and on ``hh_harmless_test``: the exact greedy nearest-neighbour grouping over
all prompts (the O(N^2) grouping the prepare job used before), the bucketed grouping at the default
``grouping.bucket_rows`` and at buckets far smaller than the data (so there are many buckets), and random groups.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from actors.embedder import Embedder
from configs.prepare import GroupingConfig
from configs.schema import Config, load_config
from pipeline import grouping, task
from pipeline.sources import read_source

GROUP_SIZE = 4
SMALL_BUCKETS = (512, 256)


def _prompts(smoke: bool) -> dict[str, list[str]]:
    demo = load_config("configs/toy_demo.yaml")
    hh, _ = read_source("../shared/data/hh_harmless_test.jsonl.gz", on_bad_row="skip")
    sets = {
        "demo": [r["prompt"] for r in task.splits(demo.seed, demo.task)[0]],
        "hh_harmless_test": hh["prompt"].to_pylist(),
    }
    return {k: v[:300] for k, v in sets.items()} if smoke else sets


def _mean(rows: pd.DataFrame) -> float:
    total, pairs = grouping.mean_within_group_similarity(rows)
    return total / pairs


def run(cfg: Config, out: Path, smoke: bool) -> dict:
    embedder = Embedder(cfg.prepare.embedder_dir, "prompts", threads=2, max_tokens=cfg.prepare.embed_max_tokens)
    default = GroupingConfig().bucket_rows
    results = {}
    for name, prompts in _prompts(smoke).items():
        e = np.stack(embedder(pd.DataFrame({"prompt": prompts}))["prompt_embedding"].map(np.asarray))
        rows = pd.DataFrame(
            {
                "id": [f"{i:07d}" for i in range(len(e))],
                "prompt_embedding": list(e),
                "response_ids": [[[0]]] * len(e),
                "origins": [["ground_truth"]] * len(e),
            }
        )
        exact = grouping.contrast_groups(e, "neighbors", GROUP_SIZE, cfg.seed)
        exact_sim = sum(grouping.group_similarity(e, g).sum() - len(g) for g in exact) / sum(
            len(g) * (len(g) - 1) for g in exact
        )
        entry = {"prompts": len(e), "exact_greedy": float(exact_sim)}
        for bucket_rows in (default, *SMALL_BUCKETS):
            grouped = grouping.group_in_process(rows, "neighbors", GROUP_SIZE, bucket_rows, 64, 0, cfg.seed)
            entry[f"bucketed_{bucket_rows}"] = {
                "buckets": int(grouped["bucket"].nunique()),
                "similarity": _mean(grouped),
                "of_exact": _mean(grouped) / exact_sim,
            }
        entry["random"] = _mean(grouping.group_in_process(rows, "random", GROUP_SIZE, default, 64, 0, cfg.seed))
        results[name] = entry
        print(f"[bench] grouping_quality {name}: {entry}", flush=True)
    results["worst_of_exact"] = min(
        v["of_exact"] for r in results.values() for k, v in r.items() if k.startswith("bucketed")
    )
    return results
