"""The prepare job's Ray Data graphs: the front pass (tokenize, embed prompts), the grouping of each bucket, and the
model stages over whole shards to the shard writer. Each step is a plain function or an actor class; the passes
that run them are in :mod:`orchestration.prepare`."""

from __future__ import annotations

import json
import math
import random
from functools import partial

import pandas as pd
import pyarrow as pa
import ray
from ray.data import ActorPoolStrategy

from actors.embedder import Embedder
from actors.generator import HFNegatives, VLLMNegatives
from actors.reference import MeanfieldNegatives, ReferenceLogps
from actors.reward_model import RewardModelScores
from configs.schema import Config
from pipeline import grouping
from pipeline.frames import active, as_lists, row_seed, timed
from pipeline.negatives import append_negatives, truncation_negatives, without_ground_truth
from pipeline.read import CHECKED_SCHEMA
from pipeline.report import shard_stats
from pipeline.rewards import drop_scores, group_statistics, load_scorer, score_responses
from pipeline.shards import shard_name, write_shard
from pipeline.stages import anchor_index, tokenize_records
from pipeline.storage import Store

MAX_PARTITIONS, ROWS_PER_ID_PARTITION = 200, 50_000


FRONT_SCHEMA = pa.schema(
    [
        *CHECKED_SCHEMA,
        ("prompt_ids", pa.list_(pa.int32())),
        ("response_ids", pa.list_(pa.list_(pa.int32()))),
        ("truncated", pa.int64()),
        ("prompt_embedding", pa.list_(pa.float32())),
        ("seconds_tokenize", pa.float64()),
        ("seconds_embed_prompts", pa.float64()),
    ]
)


def _pool(actors: int, cpus: float, gpus: float, batch_size: int | None) -> dict:
    return {
        "compute": ActorPoolStrategy(size=actors),
        "num_cpus": cpus,
        "num_gpus": gpus or None,
        "batch_size": batch_size,
        "batch_format": "pandas",
    }


def _truncate(batch: pd.DataFrame, n: int, eos_id: int, seed: int, tokenizer) -> pd.DataFrame:
    new_ids = []
    for row_id, ids, origins, ok in zip(batch["id"], batch["response_ids"], batch["origins"], active(batch)):
        gt = anchor_index(origins)
        rng = random.Random(row_seed(seed, row_id, "truncation"))
        new_ids.append(truncation_negatives([int(t) for t in ids[gt]], n, eos_id, rng) if ok else [])
    return append_negatives(batch, new_ids, "truncation", tokenizer)


def _add_batch_negatives(batch: pd.DataFrame, tokenizer) -> pd.DataFrame:
    new_ids = [
        [[int(t) for t in x] for x in ids] if ok else [] for ids, ok in zip(batch["batch_negative_ids"], active(batch))
    ]
    return append_negatives(batch, new_ids, "batch", tokenizer).drop(columns=["batch_negative_ids"])


def _front_table(batch: pd.DataFrame) -> pa.Table:
    batch = as_lists(batch)
    batch["prompt_ids"] = [list(map(int, x)) for x in batch["prompt_ids"]]
    return pa.Table.from_pandas(batch[FRONT_SCHEMA.names], schema=FRONT_SCHEMA, preserve_index=False)


def build_front_graph(
    ds: ray.data.Dataset, cfg: Config, tokenizer, chat_templated: bool, end_id: int
) -> ray.data.Dataset:
    """Checked source rows -> tokenized (each response ending with ``end_id``) -> prompt embeddings (an actor pool)
    -> the front table."""
    p = cfg.prepare
    return (
        ds.map_batches(
            timed(
                "tokenize",
                partial(
                    tokenize_records,
                    tokenizer=tokenizer,
                    max_length=cfg.model.max_length,
                    on_overlength=p.on_overlength,
                    templated=chat_templated,
                    end_id=end_id,
                ),
            ),
            batch_format="pandas",
            batch_size=p.batch_size,
        )
        .map_batches(
            Embedder,
            fn_constructor_kwargs={
                "model_dir": p.embedder_dir,
                "what": "prompts",
                "threads": max(1, int(p.model_actor_cpus)),
                "max_tokens": p.embed_max_tokens,
                "batch_size": p.embed_batch_size,
                "dtype": cfg.model.dtype,
            },
            **_pool(p.model_actors, p.model_actor_cpus, p.model_actor_gpus, p.batch_size),
        )
        .map_batches(_front_table, batch_format="pandas")
    )


def partitions(items: int, per_partition: int) -> int:
    """Shuffle partitions for ``items`` keys: enough for the cluster at scale, few for small data (each is a task)."""
    return max(1, min(MAX_PARTITIONS, math.ceil(items / per_partition)))


def good_rows(batch: pd.DataFrame, drop: frozenset) -> pd.DataFrame:
    keep = active(batch) & ~batch["row"].isin(drop)
    return batch[keep].drop(columns=["skip_message", "seconds_tokenize", "seconds_embed_prompts"])


def centroid_sample(batch: pd.DataFrame, drop: frozenset, seed: int, fraction: float) -> pd.DataFrame:
    batch = good_rows(batch, drop)
    return batch[grouping.in_sample(batch["id"], seed, fraction)][["id", "prompt_embedding"]]


def group_bucket(rows: pd.DataFrame, cfg: Config, directory: Store) -> pd.DataFrame:
    g = cfg.prepare.grouping
    grouped = grouping.bucket_groups(
        as_lists(rows),
        g.method,
        g.group_size,
        g.bucket_rows,
        cfg.prepare.shard_groups,
        cfg.prepare.negatives.batch,
        cfg.seed,
    )
    plan = []
    for key, part in grouped.groupby("shard", sort=True):
        name = shard_name(key)
        table = pa.Table.from_pandas(part.reset_index(drop=True), preserve_index=False).replace_schema_metadata({})
        (directory / name).write_parquet(table)
        similarity, pairs = grouping.mean_within_group_similarity(part)
        plan.append(
            {
                "name": name,
                "rows": len(part),
                "groups": int(part["group_id"].nunique()),
                "similarity_sum": similarity,
                "similarity_pairs": pairs,
            }
        )
    return pd.DataFrame(plan)


def build_main_graph(
    ds: ray.data.Dataset, cfg: Config, model_dir: str, tokenizer, reward: str, shard_rows: int, end_id: int
) -> ray.data.Dataset:
    """The model stages over whole shards: each input block is one shard of at least ``shard_rows`` rows.

    Model actors take batches of ``shard_rows`` rows (Ray Data needs a batch size for GPU actors): a block of at
    least that many rows is one task on its own, sliced into batches whose outputs join again into one block, so
    a shard reaches the writer whole (the writer checks it)."""
    neg, p = cfg.prepare.negatives, cfg.prepare
    threads = max(1, int(p.model_actor_cpus))
    small = partial(_pool, p.model_actors, p.model_actor_cpus, p.model_actor_gpus, shard_rows)
    ds = ds.map_batches(
        timed("batch", partial(_add_batch_negatives, tokenizer=tokenizer)), batch_format="pandas", batch_size=None
    )
    if neg.autoregressive:
        if neg.engine == "vllm":
            ds = ds.map_batches(
                VLLMNegatives,
                fn_constructor_kwargs={
                    "model_dir": model_dir,
                    "cfg": neg,
                    "seed": cfg.seed,
                    "max_model_len": cfg.model.max_length,
                    "engine": p.vllm,
                    "dtype": cfg.vllm_dtype(),
                    "cpu_bind": p.generator_cpu_bind,
                    "end_id": end_id,
                },
                **_pool(p.generator_actors, p.generator_cpus, p.generator_gpus, shard_rows),
            )
        else:
            ds = ds.map_batches(
                HFNegatives,
                fn_constructor_kwargs={
                    "model_dir": model_dir,
                    "cfg": neg,
                    "seed": cfg.seed,
                    "max_model_len": cfg.model.max_length,
                    "threads": max(1, int(p.generator_cpus)),
                    "dtype": cfg.model.dtype,
                    "end_id": end_id,
                },
                **_pool(p.generator_actors, p.generator_cpus, p.generator_gpus, shard_rows),
            )
    if neg.meanfield:
        ds = ds.map_batches(
            MeanfieldNegatives,
            fn_constructor_kwargs={
                "model_dir": model_dir,
                "n": neg.meanfield,
                "fraction": neg.meanfield_fraction,
                "seed": cfg.seed,
                "threads": threads,
                "dtype": cfg.model.dtype,
                "batch_size": p.score_batch_size,
            },
            **small(),
        )
    if neg.truncation:
        ds = ds.map_batches(
            timed(
                "truncation", partial(_truncate, n=neg.truncation, eos_id=end_id, seed=cfg.seed, tokenizer=tokenizer)
            ),
            batch_format="pandas",
            batch_size=None,
        )
    if reward.startswith("model:"):
        ds = ds.map_batches(
            RewardModelScores,
            fn_constructor_kwargs={
                "model_dir": reward[len("model:") :],
                "threads": threads,
                "batch_size": p.score_batch_size,
                "dtype": cfg.model.dtype,
            },
            **small(),
        )
    elif reward == "none":  # every row alike: none keeps the scores of rows that happened to gain no negative
        ds = ds.map_batches(drop_scores, batch_format="pandas", batch_size=None)
    elif reward != "source":
        ds = ds.map_batches(
            timed("rewards", partial(score_responses, scorer=load_scorer(reward))),
            batch_format="pandas",
            batch_size=None,
        )
    if not neg.keep_ground_truth:
        ds = ds.map_batches(timed("without_ground_truth", without_ground_truth), batch_format="pandas", batch_size=None)
    if p.embed_responses:
        ds = ds.map_batches(
            Embedder,
            fn_constructor_kwargs={
                "model_dir": p.embedder_dir,
                "what": "responses",
                "threads": threads,
                "max_tokens": p.embed_max_tokens,
                "batch_size": p.embed_batch_size,
                "dtype": cfg.model.dtype,
            },
            **small(),
        )
    ds = ds.map_batches(timed("group_statistics", group_statistics), batch_format="pandas", batch_size=None)
    if p.ref_logps:
        ds = ds.map_batches(
            ReferenceLogps,
            fn_constructor_kwargs={
                "model_dir": model_dir,
                "row_tokens": cfg.pack_row_tokens(),
                "threads": threads,
                "dtype": cfg.model.dtype,
                "prompts_per_pass": p.reference_batch_prompts,
            },
            **small(),
        )
    return ds


def load_grouped(batch: pd.DataFrame, directory: Store) -> pd.DataFrame:
    (name,) = batch["shard"]
    return as_lists((directory / name).read_table().to_pandas())


def write_shards(batch: pd.DataFrame, directory: Store, expected: dict) -> pd.DataFrame:
    batch = as_lists(batch)
    out = []
    for key, rows in batch.groupby("shard", sort=True):
        name = shard_name(key)
        if len(rows) != expected[name]:
            raise RuntimeError(
                f"{name}: {len(rows)} of its {expected[name]} rows reached the writer together; "
                "a Ray Data stage split the shard (lower prepare.shard_groups)"
            )
        if not active(rows).all():
            raise RuntimeError(f"rows of {name} were marked for skipping after grouping: {set(rows['skip_reason'])}")
        rows = rows.reset_index(drop=True)
        out.append({"name": name, "entry": json.dumps(write_shard(rows, directory, name, shard_stats(rows)))})
    return pd.DataFrame(out)
