"""The prepare job's Ray Data graph: source rows to verified training shards, with no row through the driver.

Three passes, each resumable:

1. **Front** (streaming): read tasks and a checking stage (:mod:`pipeline.read`), tokenization, prompt
   embeddings; workers write the result as Parquet under ``work/front``.
2. **Groups**: centroids fitted on a bounded sample, each prompt sent to its bucket, every bucket grouped and cut
   into shards of whole groups on a worker (:mod:`pipeline.grouping`), which writes them under ``work/grouped``.
   The driver keeps only the plan: shard names and sizes.
3. **Main** (streaming): the shards not yet written, one Ray Data block each, through the model stages
   (negatives, rewards, response embeddings, group statistics, reference log-probs); a worker writes each finished
   shard to ``shards/`` and the driver commits its entry (rows, groups, SHA-256, stats, node) to the manifest.

The driver sees counts, examples of bad rows, the centroid sample and shard entries, never the dataset.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import ray
from ray.data import ActorPoolStrategy
from transformers import AutoConfig, AutoTokenizer

from actors.embedder import Embedder, default_embedder_dir
from actors.generator import HFNegatives, VLLMNegatives
from actors.reference import MeanfieldNegatives, ReferenceLogps
from actors.reward_model import RewardModelScores
from configs.schema import Config
from pipeline import grouping, storage
from pipeline.read import CHECKED_SCHEMA, OTHER_SPLIT, SourceSpec, read_checked, templated
from pipeline.report import front_counts, merge_front_counts, shard_stats, summarize
from pipeline.shards import Manifest, content_fingerprint, shard_name, write_shard
from pipeline.sources import MAX_EXAMPLES, SourceError, bad_row_error, bad_row_message, duplicate_id
from pipeline.stages import (
    active,
    anchor_index,
    append_negatives,
    as_lists,
    drop_scores,
    group_statistics,
    load_scorer,
    row_seed,
    score_responses,
    scorer_file,
    timed,
    tokenize_records,
    truncation_negatives,
)
from pipeline.storage import Store
from pipeline.tokenize import response_end_id
from training.logprobs import check_architecture

# Settings that change only how fast records are made, never the records: a resumed run keeps its shards.
SPEED_KEYS = (
    "batch_size",
    "embed_batch_size",
    "score_batch_size",
    "reference_batch_prompts",
    "vllm",
    "generator_actors",
    "generator_cpus",
    "generator_gpus",
    "generator_cpu_bind",
    "model_actors",
    "model_actor_cpus",
    "model_actor_gpus",
)
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


# What the stages write for the same inputs and settings; raised whenever that changes (a response's end token, the
# order of a scored row's responses), so that shards made by older code are rebuilt rather than reused.
RECORDS_VERSION = 2


def records_hash(cfg: Config, model_dir: str, cache: dict | None = None) -> str:
    """Everything that determines the records (source, model, tokenizer, negatives, reward, grouping, seed, the
    precision of the reference log-probs, and the contents of every file a setting names: the chat template, the
    embedder, a reward model and a scorer's module), and nothing that only changes speed (:data:`SPEED_KEYS`).
    ``cache``: :func:`pipeline.shards.content_fingerprint`'s, so unchanged files are not read again."""
    prepare = cfg.prepare.model_dump(mode="json")
    for key in SPEED_KEYS:
        prepare.pop(key)
    payload = {
        "version": RECORDS_VERSION,
        "seed": cfg.seed,
        "prepare": prepare,
        "reference_dtype": cfg.reference_dtype(),
        **{s: getattr(cfg, s).model_dump(mode="json") for s in ("data", "task", "model")},
    }
    files = {
        "model": model_dir,
        "source": cfg.data.source,
        "embedder": cfg.prepare.embedder_dir or default_embedder_dir(),
    }
    if cfg.data.chat_template not in ("auto", "none"):
        files["chat_template"] = cfg.data.chat_template
    reward = cfg.prepare.reward
    if reward.startswith("model:"):
        files["reward_model"] = reward[len("model:") :]
    elif ":" in reward:
        files["scorer"] = scorer_file(reward)
    payload["files"] = {name: content_fingerprint(path, cache) for name, path in files.items() if path}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def reward_mode(cfg: Config, has_scores: bool, adds_negatives: bool) -> str:
    """What scores the shards carry (``prepare.reward`` resolved). A scored source whose rows gain negatives the
    source never scored is refused under ``auto``, before the model stages run: its scores would otherwise be
    dropped without a word (an explicit ``none`` drops them from every row, so no prompt keeps scores)."""
    mode = cfg.prepare.reward
    if mode == "auto":
        if has_scores and not adds_negatives:
            return "source"
        if has_scores and cfg.data.source:
            raise ValueError(
                f"{cfg.data.source} has scores, but prepare.negatives adds responses the source did not score, and "
                "prepare.reward=auto has no scorer for them: set prepare.reward to 'module:function' or 'model:<dir>' "
                "to score every response, set the prepare.negatives counts to 0 to train on the source's scores, or "
                "set prepare.reward=none to train without scores"
            )
        return "task" if not cfg.data.source else "none"
    if mode == "source" and adds_negatives:
        raise ValueError(
            "prepare.reward=source cannot score synthetic negatives; use 'task', 'module:function' or 'model:<dir>'"
        )
    if mode == "source" and not has_scores:
        raise ValueError(f"prepare.reward=source but {cfg.data.source} has no scores")
    return mode


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


def front_pass(cfg: Config, model_dir: str, tokenizer, root: Store, key: str) -> tuple[SourceSpec | None, int, Store]:
    """Read, check, tokenize and embed every source row; workers write the rows (bad ones marked) as Parquet into
    ``<root>/front-<key>``, kept across re-runs with the same records hash (complete once its ``_DONE`` marker is
    written: an object store cannot rename a directory into place). Returns the source's spec, the token every
    response ends with (:func:`pipeline.tokenize.response_end_id`) and the directory."""
    directory = root / f"front-{key}"
    ds, spec = read_checked(cfg, model_dir)
    chat_templated = templated(cfg, spec, model_dir)
    end_id = response_end_id(tokenizer, cfg.data.chat_template, chat_templated)
    if (directory / "_DONE").is_file():
        return spec, end_id, directory
    root.delete_dir()  # an older records hash's rows, or a killed write's
    build_front_graph(ds, cfg, tokenizer, chat_templated, end_id).write_parquet(directory.path, filesystem=directory.fs)
    (directory / "_DONE").write_text(key)
    return spec, end_id, directory


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


def find_duplicates(front: ray.data.Dataset, rows: int) -> list[tuple[int, str]]:
    """``(row, id)`` of every good row whose id an earlier row already has (ordered by row); only ids that occur
    more than once reach the driver."""
    ids = front.select_columns(["id", "row", "skip_reason"]).filter(lambda r: r["skip_reason"] == "")
    counts = ids.groupby("id", num_partitions=_partitions(rows, ROWS_PER_ID_PARTITION)).count()
    repeated = [r["id"] for r in counts.filter(lambda r: r["count()"] > 1).take_all()]
    if not repeated:
        return []
    wanted = set(repeated)
    rows = sorted((r["id"], r["row"]) for r in ids.filter(lambda r: r["id"] in wanted).take_all())
    seen, dups = set(), []
    for rid, row in rows:
        if rid in seen:
            dups.append((row, rid))
        seen.add(rid)
    return sorted(dups)


def _partitions(items: int, per_partition: int) -> int:
    """Shuffle partitions for ``items`` keys: enough for the cluster at scale, few for small data (each is a task)."""
    return max(1, min(MAX_PARTITIONS, math.ceil(items / per_partition)))


def _keep(batch: pd.DataFrame, drop: frozenset) -> pd.DataFrame:
    keep = active(batch) & ~batch["row"].isin(drop)
    return batch[keep].drop(columns=["skip_message", "seconds_tokenize", "seconds_embed_prompts"])


def _sample(batch: pd.DataFrame, drop: frozenset, seed: int, fraction: float) -> pd.DataFrame:
    batch = _keep(batch, drop)
    return batch[grouping.in_sample(batch["id"], seed, fraction)][["id", "prompt_embedding"]]


def _group_bucket(rows: pd.DataFrame, cfg: Config, directory: Store) -> pd.DataFrame:
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


def group_pass(cfg: Config, front: ray.data.Dataset, rows: int, drop: frozenset, directory: Store, key: str) -> dict:
    """Bucket and group every good row; workers write each shard's grouped rows. Returns (and keeps) the plan."""
    plan_file = directory / "plan.json"
    kept = json.loads(plan_file.read_text()) if plan_file.is_file() else {}
    if kept.get("records_hash") == key:
        return kept
    directory.delete_dir()
    g = cfg.prepare.grouping
    buckets = grouping.bucket_count(rows, g.bucket_rows)
    centroids = None
    if g.method == "neighbors" and buckets > 1:
        fraction = grouping.sample_fraction(rows, buckets)
        sample = front.map_batches(
            _sample, fn_kwargs={"drop": drop, "seed": cfg.seed, "fraction": fraction}, batch_format="pandas"
        ).take_all()
        sample.sort(key=lambda r: r["id"])
        centroids = grouping.fit_centroids(
            np.stack([np.asarray(r["prompt_embedding"]) for r in sample]), buckets, cfg.seed
        )
        buckets = len(centroids)
    shards = (
        front.map_batches(_keep, fn_kwargs={"drop": drop}, batch_format="pandas")
        .map_batches(
            grouping.assign_buckets,
            fn_kwargs={"centroids": centroids, "buckets": buckets, "seed": cfg.seed},
            batch_format="pandas",
        )
        .groupby("bucket", num_partitions=_partitions(buckets, 1))
        .map_groups(_group_bucket, fn_kwargs={"cfg": cfg, "directory": directory}, batch_format="pandas")
        .take_all()
    )
    plan = {
        "records_hash": key,
        "buckets": buckets,
        "shards": {s["name"]: {"rows": int(s["rows"]), "groups": int(s["groups"])} for s in shards},
        "mean_within_group_similarity": sum(s["similarity_sum"] for s in shards)
        / max(1, sum(s["similarity_pairs"] for s in shards)),
    }
    plan_file.write_text(json.dumps(plan))
    return plan


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


def _load_grouped(batch: pd.DataFrame, directory: Store) -> pd.DataFrame:
    (name,) = batch["shard"]
    return as_lists((directory / name).read_table().to_pandas())


FINGERPRINTS = "fingerprints.json"  # per file: size, modification time and SHA-256 of the files records_hash read


def _fingerprint_cache(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _write_shards(batch: pd.DataFrame, directory: Store, expected: dict) -> pd.DataFrame:
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


def run_prepare(cfg: Config) -> dict:
    started = time.perf_counter()
    out = storage.job_store(cfg, "prepare")  # shards and work files: written by the workers, on disk or in a bucket
    shards_dir, work = out / "shards", out / "work"
    local = cfg.job_dir("prepare")
    model_dir = str(cfg.policy_dir())
    check_architecture(AutoConfig.from_pretrained(model_dir))  # before any work: a model that cannot be scored exactly
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    key = records_hash(cfg, model_dir, fingerprints := _fingerprint_cache(local / FINGERPRINTS))
    local.mkdir(parents=True, exist_ok=True)
    (local / FINGERPRINTS).write_text(json.dumps(fingerprints))
    # A bad row stops the job with the reader's own error (file, row, field), not Ray's wrapper of it.
    ray.data.DataContext.get_current().raise_original_map_exception = True
    manifest, notes = Manifest.open(shards_dir, key)
    for note in notes:
        print(f"[prepare] {note}", flush=True)
    if manifest.shards:
        print(
            f"[prepare] {len(manifest.shards)} shards written earlier match the manifest's SHA-256 in {shards_dir}: "
            "kept",
            flush=True,
        )
    if manifest.complete:
        print(f"[prepare] all {manifest.total_shards} shards already written for these settings", flush=True)
        return summarize(manifest, time.perf_counter() - started)

    try:
        spec, end_id, front_dir = front_pass(cfg, model_dir, tokenizer, work / "front", key)
        front = ray.data.read_parquet(front_dir.path, filesystem=front_dir.fs)
        counts = merge_front_counts(
            front.drop_columns(["prompt_embedding", "prompt_ids", "response_ids", "responses"])
            .map_batches(front_counts, batch_format="pandas")
            .take_all()
        )
        duplicates = find_duplicates(front, counts["good"])
    except Exception as exc:  # a bad row found by a worker: say it as the reader would, not as a Ray traceback
        error = user_error(exc)
        if error is None:
            raise  # not the input's fault: the worker's traceback is what the user needs
        raise error from None
    path = cfg.data.source or "embedded-task"
    if duplicates and cfg.data.on_bad_row == "error":
        row, rid = duplicates[0]
        raise bad_row_error(path, row, duplicate_id(rid))
    for row, rid in duplicates:
        counts["skipped"]["source:duplicate_id"] = counts["skipped"].get("source:duplicate_id", 0) + 1
        examples = counts["examples"].setdefault("source:duplicate_id", [])
        if len(examples) < MAX_EXAMPLES:
            examples.append(bad_row_message(path, row, duplicate_id(rid)))
    good = counts["good"] - len(duplicates)
    if good == 0:
        raise SourceError(
            f"{path}: no valid rows ({counts['rows_read']} read, skipped: {counts['skipped']}); "
            f"e.g. {next(iter(counts['examples'].values()), ['-'])[0]}",
            path=path,
        )
    n_neg = sum(getattr(cfg.prepare.negatives, k) for k in ("autoregressive", "meanfield", "truncation", "batch"))
    reward = reward_mode(cfg, counts["scored"] > 0, n_neg > 0)

    t = time.perf_counter()
    plan = group_pass(cfg, front, good, frozenset(r for r, _ in duplicates), work / "grouped", key)
    manifest.total_shards = len(plan["shards"])
    manifest.source = {
        "path": path,
        "format": spec.format if spec else "ground_truth",
        "rows_read": counts["rows_read"],
        "response_end_id": end_id,
        "ref_logps_dtype": cfg.reference_dtype() if cfg.prepare.ref_logps else None,
        "rows_out": good,
        "filtered": counts["skipped"].pop(OTHER_SPLIT, 0),
        **counts,
        "reward": reward,
        "grouping": {
            "buckets": plan["buckets"],
            "seconds": time.perf_counter() - t,
            "mean_within_group_similarity": plan["mean_within_group_similarity"],
        },
    }
    manifest.save()
    pending = sorted(set(plan["shards"]) - set(manifest.shards))
    print(
        f"[prepare] {good} rows in {sum(s['groups'] for s in plan['shards'].values())} groups -> "
        f"{manifest.total_shards} shards ({manifest.total_shards - len(pending)} already written, {len(pending)} to "
        f"process); reward: {reward}",
        flush=True,
    )
    if pending:
        ds = ray.data.from_items([{"shard": name} for name in pending], override_num_blocks=len(pending))
        ds = ds.map_batches(
            _load_grouped, fn_kwargs={"directory": work / "grouped"}, batch_format="pandas", batch_size=None
        )
        ds = build_main_graph(
            ds, cfg, model_dir, tokenizer, reward, min(plan["shards"][n]["rows"] for n in pending), end_id
        )
        ds = ds.map_batches(
            _write_shards,
            fn_kwargs={"directory": shards_dir, "expected": {n: plan["shards"][n]["rows"] for n in pending}},
            batch_format="pandas",
            batch_size=None,
            scheduling_strategy="SPREAD",
        )
        for written in ds.iter_rows():
            manifest.commit(written["name"], json.loads(written["entry"]))
            print(
                f"[prepare] wrote {written['name']}: {manifest.shards[written['name']]['rows']} rows "
                f"({len(manifest.shards)}/{manifest.total_shards} shards, {time.perf_counter() - started:.0f}s)",
                flush=True,
            )
    if not manifest.complete:
        missing = sorted(set(plan["shards"]) - set(manifest.shards))
        raise RuntimeError(f"prepare lost rows: shards {missing} were never written")
    work.delete_dir()
    return summarize(manifest, time.perf_counter() - started)


def user_error(exc: BaseException) -> SourceError | None:
    """The :class:`SourceError` (a bad input, naming file, row and field) a stage raised, out of Ray's wrappers; None
    when the failure is something else (a bug or an environment problem), whose traceback must not be dropped."""
    seen = exc
    while seen is not None:
        if isinstance(seen, SourceError) and not isinstance(
            seen, ray.exceptions.RayError
        ):  # Ray's wrapper subclasses it
            return seen
        seen = getattr(seen, "cause", None) or seen.__cause__
    return None
