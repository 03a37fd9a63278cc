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

import json
import time

import numpy as np
import ray
from transformers import AutoConfig, AutoTokenizer

from configs.schema import Config
from models.architectures import check_architecture
from orchestration.prepare_graph import (
    ROWS_PER_ID_PARTITION,
    build_front_graph,
    build_main_graph,
    centroid_sample,
    good_rows,
    group_bucket,
    load_grouped,
    partitions,
    write_shards,
)
from orchestration.records_hash import FINGERPRINTS, fingerprint_cache, records_hash
from pipeline import grouping, storage
from pipeline.read import OTHER_SPLIT, SourceSpec, read_checked, templated
from pipeline.report import front_counts, merge_front_counts, summarize
from pipeline.shards import Manifest
from pipeline.sources import MAX_EXAMPLES, SourceError, bad_row_error, bad_row_message, duplicate_id
from pipeline.storage import Store
from pipeline.tokenize import response_end_id


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


def find_duplicates(front: ray.data.Dataset, rows: int) -> list[tuple[int, str]]:
    """``(row, id)`` of every good row whose id an earlier row already has (ordered by row); only ids that occur
    more than once reach the driver."""
    ids = front.select_columns(["id", "row", "skip_reason"]).filter(lambda r: r["skip_reason"] == "")
    counts = ids.groupby("id", num_partitions=partitions(rows, ROWS_PER_ID_PARTITION)).count()
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


def front_pass(cfg: Config, model_dir: str, tokenizer, root: Store, key: str) -> tuple[SourceSpec | None, int, Store]:
    """Read, check, tokenize and embed every source row; workers write the rows (bad ones marked) as Parquet into
    ``<root>/front-<key>``, kept across re-runs with the same records hash (complete once its ``_DONE`` marker is
    written: an object store cannot rename a directory into place). Returns the source's spec, the token every
    response ends with (:func:`pipeline.tokenize.response_end_id`) and the directory."""
    directory = root / f"front-{key}"
    ds, spec = read_checked(cfg, model_dir)
    if spec and not cfg.prepare.negatives.keep_ground_truth:  # refused before the front pass's work
        if spec.format != "ground_truth":
            raise ValueError(
                f"{spec.path}: prepare.negatives.keep_ground_truth=false samples from each row's prompt and drops "
                f"its ground truth, so the rows must have the ground_truth format, not {spec.format}"
            )
        if cfg.prepare.reward == "auto":
            raise ValueError(
                f"prepare.negatives.keep_ground_truth=false needs the samples of {spec.path} scored, and "
                "prepare.reward=auto has no scorer for them: set prepare.reward to 'module:function' or 'model:<dir>'"
            )
    chat_templated = templated(cfg, spec, model_dir)
    end_id = response_end_id(tokenizer, cfg.data.chat_template, chat_templated)
    if (directory / "_DONE").is_file():
        return spec, end_id, directory
    root.delete_dir()  # an older records hash's rows, or a killed write's
    build_front_graph(ds, cfg, tokenizer, chat_templated, end_id).write_parquet(directory.path, filesystem=directory.fs)
    (directory / "_DONE").write_text(key)
    return spec, end_id, directory


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
            centroid_sample, fn_kwargs={"drop": drop, "seed": cfg.seed, "fraction": fraction}, batch_format="pandas"
        ).take_all()
        sample.sort(key=lambda r: r["id"])
        centroids = grouping.fit_centroids(
            np.stack([np.asarray(r["prompt_embedding"]) for r in sample]), buckets, cfg.seed
        )
        buckets = len(centroids)
    shards = (
        front.map_batches(good_rows, fn_kwargs={"drop": drop}, batch_format="pandas")
        .map_batches(
            grouping.assign_buckets,
            fn_kwargs={"centroids": centroids, "buckets": buckets, "seed": cfg.seed},
            batch_format="pandas",
        )
        .groupby("bucket", num_partitions=partitions(buckets, 1))
        .map_groups(group_bucket, fn_kwargs={"cfg": cfg, "directory": directory}, batch_format="pandas")
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


def run_prepare(cfg: Config) -> dict:
    started = time.perf_counter()
    out = storage.job_store(cfg, "prepare")  # shards and work files: written by the workers, on disk or in a bucket
    shards_dir, work = out / "shards", out / "work"
    local = cfg.job_dir("prepare")
    model_dir = str(cfg.policy_dir())
    check_architecture(AutoConfig.from_pretrained(model_dir))  # before any work: a model that cannot be scored exactly
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    key = records_hash(cfg, model_dir, fingerprints := fingerprint_cache(local / FINGERPRINTS))
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
        side = (
            f" on the {cfg.data.rows} side of data.test_fraction={cfg.data.test_fraction}"
            if cfg.data.test_fraction
            else ""
        )
        raise SourceError(
            f"{path}: no valid rows{side} ({counts['rows_read']} read, skipped: {counts['skipped']}); "
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
            load_grouped, fn_kwargs={"directory": work / "grouped"}, batch_format="pandas", batch_size=None
        )
        ds = build_main_graph(
            ds, cfg, model_dir, tokenizer, reward, min(plan["shards"][n]["rows"] for n in pending), end_id
        )
        ds = ds.map_batches(
            write_shards,
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
