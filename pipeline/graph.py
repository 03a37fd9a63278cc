"""The prepare job's Ray Data graph: source rows to verified training shards.

Two passes. The front pass tokenizes and embeds prompts; the driver then forms contrast
groups (a global step: it needs every prompt embedding) and assigns whole groups to shards.
The main pass runs the model stages (negatives, rewards, response embeddings, group
statistics, reference log-probs) over the rows of the shards not yet written, in order, and
the driver writes each shard as soon as all of its rows have come through.
"""
from __future__ import annotations

import random
import time
from collections import Counter, defaultdict
from functools import partial

import numpy as np
import pandas as pd
import pyarrow as pa
import ray
from ray.data import ActorPoolStrategy

from actors.embedder import Embedder
from actors.generator import HFNegatives, VLLMNegatives
from actors.reference import MeanfieldNegatives, ReferenceLogps
from actors.reward_model import RewardModelScores
from configs.schema import Config
from pipeline import task
from pipeline.records import BASE_SCHEMA, validate_records
from pipeline.shards import Manifest, content_fingerprint, shard_name
from pipeline.sources import read_source
from pipeline.stages import (
    active,
    anchor_index,
    append_negatives,
    as_lists,
    contrast_groups,
    group_similarity,
    group_statistics,
    load_scorer,
    row_seed,
    score_responses,
    timed,
    tokenize_records,
    truncation_negatives,
)
from pipeline.tokenize import chat_renderer, user_prompt
from training.logprobs import check_architecture

STAGE_ORDER = (
    "read", "tokenize", "embed_prompts", "groups", "batch", "autoregressive", "meanfield", "truncation",
    "rewards", "embed_responses", "group_statistics", "ref_logps", "write",
)


def load_records(cfg: Config, tokenizer) -> tuple[pa.Table, dict, bool]:
    """The source as canonical records (a file through the validating readers, or the embedded task's train split),
    its read report, and whether its prompts were rendered by a chat template (``data.chat_template``)."""
    render = chat_renderer(tokenizer, cfg.data.chat_template)
    if cfg.data.source:
        table, report = read_source(
            cfg.data.source,
            format=cfg.data.format,
            split=cfg.data.split,
            on_bad_row=cfg.data.on_bad_row,
            max_chars=cfg.data.max_chars,
            hf_split=cfg.data.hf_split,
            chat_template_renderer=render,
        )
        return table, report.to_dict(), render is not None and report.format == "conversational"
    train, _ = task.splits(cfg.seed, cfg.task)
    table = pa.Table.from_pylist(
        [
            {"id": r["id"], "prompt": user_prompt(r["prompt"], render)[0], "responses": [r["response"]],
             "origins": ["ground_truth"], "scores": None, "source": "embedded-task", "row": i + 1}
            for i, r in enumerate(train)
        ],
        schema=BASE_SCHEMA,
    )
    report = {"path": "embedded-task", "rows_read": len(train), "rows_out": len(train), "skipped": {}}
    return validate_records(table), report, render is not None


def reward_mode(cfg: Config, has_scores: bool, adds_negatives: bool) -> str:
    mode = cfg.prepare.reward
    if mode == "auto":
        if has_scores and not adds_negatives:
            return "source"
        return "task" if not cfg.data.source else "none"
    if mode == "source" and adds_negatives:
        raise ValueError("prepare.reward=source cannot score synthetic negatives; use 'task', 'module:function' or 'model:<dir>'")
    if mode == "source" and not has_scores:
        raise ValueError(f"prepare.reward=source but {cfg.data.source} has no scores")
    return mode


def _pool(cfg: Config, actors: int, cpus: float, gpus: float) -> dict:
    return {"compute": ActorPoolStrategy(size=actors), "num_cpus": cpus, "num_gpus": gpus or None,
            "batch_size": cfg.prepare.batch_size, "batch_format": "pandas"}


def _truncate(batch: pd.DataFrame, n: int, eos_id: int, seed: int, tokenizer) -> pd.DataFrame:
    new_ids = []
    for row_id, ids, origins, ok in zip(batch["id"], batch["response_ids"], batch["origins"], active(batch)):
        gt = anchor_index(origins)
        rng = random.Random(row_seed(seed, row_id, "truncation"))
        new_ids.append(truncation_negatives([int(t) for t in ids[gt]], n, eos_id, rng) if ok else [])
    return append_negatives(batch, new_ids, "truncation", tokenizer)


def _add_batch_negatives(batch: pd.DataFrame, tokenizer) -> pd.DataFrame:
    new_ids = [[[int(t) for t in x] for x in ids] if ok else [] for ids, ok in zip(batch["batch_negative_ids"], active(batch))]
    return append_negatives(batch, new_ids, "batch", tokenizer).drop(columns=["batch_negative_ids"])


def assign_groups(front: pd.DataFrame, cfg: Config) -> pd.DataFrame:
    """Group active rows by prompt embedding, attach each group's similarity rows and batch negatives, order by group."""
    rows = front[active(front)].reset_index(drop=True)
    embeddings = np.stack([np.asarray(e, dtype=np.float32) for e in rows["prompt_embedding"]])
    groups = contrast_groups(embeddings, cfg.prepare.grouping.method, cfg.prepare.grouping.group_size, cfg.seed)
    gid, pos, size, sims, batch_neg = ([None] * len(rows) for _ in range(5))
    n_batch = cfg.prepare.negatives.batch
    for g, members in enumerate(groups):
        sim = group_similarity(embeddings, members)
        for k, i in enumerate(members):
            gid[i], pos[i], size[i], sims[i] = g, k, len(members), sim[k].astype(np.float32).tolist()
            others = [j for j in members if j != i][:n_batch]
            batch_neg[i] = [list(rows["response_ids"][j][anchor_index(rows["origins"][j])]) for j in others]
    rows["group_id"], rows["group_position"], rows["group_size"] = gid, pos, size
    rows["group_similarity"], rows["batch_negative_ids"] = sims, batch_neg
    rows["shard"] = rows["group_id"] // cfg.prepare.shard_groups
    return rows.sort_values(["group_id", "group_position"], kind="stable").reset_index(drop=True)


def build_main_graph(ds: ray.data.Dataset, cfg: Config, model_dir: str, tokenizer, reward: str) -> ray.data.Dataset:
    neg, p = cfg.prepare.negatives, cfg.prepare
    threads = max(1, int(p.model_actor_cpus))
    small = partial(_pool, cfg, p.model_actors, p.model_actor_cpus, p.model_actor_gpus)
    ds = ds.map_batches(timed("batch", partial(_add_batch_negatives, tokenizer=tokenizer)), batch_format="pandas")
    if neg.autoregressive:
        if neg.engine == "vllm":
            ds = ds.map_batches(VLLMNegatives, fn_constructor_kwargs={"model_dir": model_dir, "cfg": neg, "seed": cfg.seed,
                                "max_model_len": cfg.model.max_length, "cpu_bind": p.generator_cpu_bind},
                                **_pool(cfg, p.generator_actors, p.generator_cpus, p.generator_gpus))
        else:
            ds = ds.map_batches(HFNegatives, fn_constructor_kwargs={"model_dir": model_dir, "cfg": neg, "seed": cfg.seed,
                                "max_model_len": cfg.model.max_length, "threads": max(1, int(p.generator_cpus))},
                                **_pool(cfg, p.generator_actors, p.generator_cpus, p.generator_gpus))
    if neg.meanfield:
        ds = ds.map_batches(MeanfieldNegatives, fn_constructor_kwargs={"model_dir": model_dir, "n": neg.meanfield,
                            "fraction": neg.meanfield_fraction, "seed": cfg.seed, "threads": threads}, **small())
    if neg.truncation:
        ds = ds.map_batches(timed("truncation", partial(_truncate, n=neg.truncation, eos_id=tokenizer.eos_token_id,
                                                          seed=cfg.seed, tokenizer=tokenizer)), batch_format="pandas")
    if reward.startswith("model:"):
        ds = ds.map_batches(RewardModelScores, fn_constructor_kwargs={"model_dir": reward[len("model:"):], "threads": threads}, **small())
    elif reward not in ("source", "none"):
        ds = ds.map_batches(timed("rewards", partial(score_responses, scorer=load_scorer(reward))), batch_format="pandas")
    if p.embed_responses:
        ds = ds.map_batches(Embedder, fn_constructor_kwargs={"model_dir": p.embedder_dir, "what": "responses",
                                                              "threads": threads, "max_tokens": p.embed_max_tokens}, **small())
    ds = ds.map_batches(timed("group_statistics", partial(group_statistics, alpha=p.swepo_alpha, p=p.swepo_p,
                                                          weighting=p.swepo_weighting)), batch_format="pandas")
    if p.ref_logps:
        ds = ds.map_batches(ReferenceLogps, fn_constructor_kwargs={"model_dir": model_dir, "row_tokens": cfg.pack_row_tokens(),
                                                                 "threads": threads}, **small())
    return ds


def run_prepare(cfg: Config) -> dict:
    from transformers import AutoConfig, AutoTokenizer

    started = time.perf_counter()
    out_dir = cfg.job_dir("prepare")
    shards_dir = out_dir / "shards"
    model_dir = cfg.policy_dir()
    check_architecture(AutoConfig.from_pretrained(model_dir))  # before any work: a model that cannot be scored exactly
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    seconds: Counter = Counter()

    t = time.perf_counter()
    table, source_report, templated = load_records(cfg, tokenizer)
    if cfg.prepare.max_rows:
        table = table.slice(0, cfg.prepare.max_rows)
    seconds["read"] = time.perf_counter() - t
    has_scores = table["scores"].null_count < table.num_rows
    n_neg = sum(getattr(cfg.prepare.negatives, k) for k in ("autoregressive", "meanfield", "truncation", "batch"))
    reward = reward_mode(cfg, has_scores, n_neg > 0)
    config_hash = cfg.section_hash("data", "prepare", "task", "model") + content_fingerprint(model_dir)
    if cfg.data.source:
        config_hash += content_fingerprint(cfg.data.source)
    manifest, notes = Manifest.open(shards_dir, config_hash)
    for note in notes:
        print(f"[prepare] {note}")

    # Front pass: tokenize, embed prompts; then group in the driver.
    t = time.perf_counter()
    rows = as_lists(table.to_pandas())
    rows["scores"] = [[] if s is None else list(s) for s in rows["scores"]]
    small = _pool(cfg, cfg.prepare.model_actors, cfg.prepare.model_actor_cpus, cfg.prepare.model_actor_gpus)
    front = (
        ray.data.from_pandas(rows)
        .map_batches(timed("tokenize", partial(tokenize_records, tokenizer=tokenizer, max_length=cfg.model.max_length,
                                               on_overlength=cfg.prepare.on_overlength, templated=templated)),
                     batch_format="pandas")
        .map_batches(Embedder, fn_constructor_kwargs={"model_dir": cfg.prepare.embedder_dir, "what": "prompts",
                                                      "threads": max(1, int(cfg.prepare.model_actor_cpus)),
                                                      "max_tokens": cfg.prepare.embed_max_tokens}, **small)
        .to_pandas()
    )
    front = as_lists(front)
    skipped = Counter(r for r in front["skip_reason"] if r)
    truncated = int(front.loc[front["skip_reason"] == "", "truncated"].sum())
    for stage in ("tokenize", "embed_prompts"):
        seconds[stage] += float(front[f"seconds_{stage}"].sum())
    t = time.perf_counter()
    grouped = assign_groups(front, cfg)
    seconds["groups"] = time.perf_counter() - t
    manifest.total_shards = int(grouped["shard"].max()) + 1
    manifest.source = source_report
    manifest.save()
    done = {i for i in range(manifest.total_shards) if shard_name(i) in manifest.shards}
    todo = grouped[~grouped["shard"].isin(done)].drop(columns=[c for c in grouped.columns if c.startswith("seconds_")])
    print(f"[prepare] {len(grouped)} rows in {grouped['group_id'].nunique()} groups -> {manifest.total_shards} shards "
          f"({len(done)} already written, {len(todo)} rows to process); reward: {reward}", flush=True)

    if len(todo):
        graph = build_main_graph(ray.data.from_pandas(todo), cfg, str(model_dir), tokenizer, reward)
        _write_stream(graph, todo["shard"].value_counts().to_dict(), manifest, started)
    if len(manifest.shards) != manifest.total_shards:
        missing = sorted(set(range(manifest.total_shards)) - {int(n[6:11]) for n in manifest.shards})
        raise RuntimeError(f"prepare lost rows: shards {missing} never received all their rows")

    return _summarize(cfg, manifest, source_report, table.num_rows, skipped, truncated, seconds, time.perf_counter() - started,
                      reward)


def _write_stream(graph: ray.data.Dataset, shard_rows: dict, manifest: Manifest, started: float) -> None:
    """Write each shard as soon as all its rows have arrived (rows come in shard order)."""
    pending: dict[int, list[pd.DataFrame]] = defaultdict(list)
    arrived: Counter = Counter()
    for batch in graph.iter_batches(batch_format="pandas", batch_size=None):
        for shard, part in batch.groupby("shard", sort=False):
            pending[shard].append(part)
            arrived[shard] += len(part)
            if arrived[shard] == shard_rows[shard]:
                rows = as_lists(pd.concat(pending.pop(shard), ignore_index=True))
                if not active(rows).all():
                    raise RuntimeError(f"rows of shard {shard} were marked for skipping after grouping: {set(rows['skip_reason'])}")
                path = manifest.add(int(shard), rows, _shard_stats(rows))
                print(f"[prepare] wrote {path.name}: {len(rows)} rows ({len(manifest.shards)}/{manifest.total_shards} shards, "
                      f"{time.perf_counter() - started:.0f}s)", flush=True)


def _shard_stats(rows: pd.DataFrame) -> dict:
    return {
        "rows": len(rows),
        "responses_by_origin": dict(Counter(o for origins in rows["origins"] for o in origins)),
        "duplicate_negatives_dropped": int(rows["duplicate_negatives"].sum()) if "duplicate_negatives" in rows else 0,
        "equal_score_rows": int(sum(1 for d in rows["deviation"] if len(d) and max(d) <= 0)),
        "generated_tokens": int(rows["generated_tokens"].sum()) if "generated_tokens" in rows else 0,
        "seconds": {c[len("seconds_"):]: float(rows[c].sum()) for c in rows.columns if c.startswith("seconds_")},
    }


def _summarize(cfg: Config, manifest: Manifest, source_report: dict, rows_in: int, front_skipped: Counter,
               truncated: int, seconds: Counter, wall: float, reward: str) -> dict:
    skipped = Counter(front_skipped)
    origins: Counter = Counter()
    generated = duplicates = equal = 0
    for entry in manifest.shards.values():
        st = entry["stats"]
        origins.update(st["responses_by_origin"])
        duplicates += st["duplicate_negatives_dropped"]
        equal += st["equal_score_rows"]
        generated += st["generated_tokens"]
        for stage, s in st["seconds"].items():
            seconds[stage] += s
    for reason, n in source_report.get("skipped", {}).items():
        skipped[f"source:{reason}"] += n
    if source_report.get("filtered"):
        skipped["other_split"] += source_report["filtered"]
    if source_report.get("rows_out", 0) > rows_in:
        skipped["max_rows"] = source_report["rows_out"] - rows_in
    gen_seconds = seconds.get("autoregressive", 0.0)
    rows_out = sum(e["rows"] for e in manifest.shards.values())
    return {
        "rows_in": source_report.get("rows_read", rows_in),
        "rows_out": rows_out,
        "duplicate_negatives_dropped": duplicates,
        "equal_score_rows": equal,
        "groups": sum(e["groups"] for e in manifest.shards.values()),
        "shards": len(manifest.shards),
        "shards_dir": str(manifest.directory),
        "skipped": dict(skipped),
        "truncated_responses": truncated,
        "responses_by_origin": dict(origins),
        "negatives_by_type": {k: v for k, v in origins.items() if k in ("autoregressive", "meanfield", "truncation", "batch")},
        "seconds_per_stage": {k: round(seconds[k], 3) for k in STAGE_ORDER if k in seconds},
        "generator_start_seconds": seconds.get("generator_start", 0.0),
        "generated_tokens": generated,
        "generation_tokens_per_second": generated / gen_seconds if gen_seconds else None,
        "reward": reward,
        "wall_seconds": wall,
        "source": source_report,
    }


def summary_table(report: dict) -> str:
    lines = [f"{'rows in':<28}{report['rows_in']:>12}", f"{'rows out':<28}{report['rows_out']:>12}",
             f"{'contrast groups':<28}{report['groups']:>12}", f"{'shards':<28}{report['shards']:>12}"]
    lines += [f"{'skipped: ' + k:<28}{v:>12}" for k, v in sorted(report["skipped"].items())]
    if report["truncated_responses"]:
        lines.append(f"{'responses truncated':<28}{report['truncated_responses']:>12}")
    lines += [f"{'responses: ' + k:<28}{v:>12}" for k, v in sorted(report["responses_by_origin"].items())]
    lines += [f"{'negatives equal to anchor':<28}{report['duplicate_negatives_dropped']:>12}",
              f"{'rows with all-equal scores':<28}{report['equal_score_rows']:>12}"]
    lines += [f"{'seconds: ' + k:<28}{v:>12.2f}" for k, v in report["seconds_per_stage"].items()]
    if report["generation_tokens_per_second"]:
        lines.append(f"{'generation tokens/s':<28}{report['generation_tokens_per_second']:>12.1f}")
    lines.append(f"{'wall seconds':<28}{report['wall_seconds']:>12.1f}")
    return "\n".join(lines)
