"""What the prepare job reports: per-block counts of the front pass, per-shard statistics, and the summary table.

Workers reduce their rows to counts (:func:`front_counts`, :func:`shard_stats`); the driver only adds them up.
"""

from __future__ import annotations

import json
from collections import Counter

import pandas as pd

from pipeline.shards import Manifest
from pipeline.sources import MAX_EXAMPLES

STAGE_ORDER = (
    "read",
    "tokenize",
    "embed_prompts",
    "groups",
    "batch",
    "autoregressive",
    "meanfield",
    "truncation",
    "rewards",
    "without_ground_truth",
    "embed_responses",
    "group_statistics",
    "ref_logps",
    "write",
)


def front_counts(batch: pd.DataFrame) -> pd.DataFrame:
    """One block of front-pass rows as one row of counts: rows, good rows, scored rows, truncated responses,
    skip reasons with the first examples of each, and stage seconds."""
    good = batch["skip_reason"] == ""
    examples: dict[str, list] = {}
    for reason, part in batch[~good].sort_values("row").groupby("skip_reason"):
        examples[reason] = [
            [int(r), m or f"{s} row {r}: {reason}"]
            for r, m, s in zip(part["row"][:MAX_EXAMPLES], part["skip_message"], part["source"])
        ]
    return pd.DataFrame(
        [
            {
                "rows_read": len(batch),
                "good": int(good.sum()),
                "scored": int(sum(1 for s, ok in zip(batch["scores"], good) if ok and s is not None and len(s))),
                "truncated": int(batch.loc[good, "truncated"].sum()),
                "skipped": json.dumps(batch.loc[~good, "skip_reason"].value_counts().to_dict()),
                "examples": json.dumps(examples),
                "seconds_tokenize": float(batch["seconds_tokenize"].sum()),
                "seconds_embed_prompts": float(batch["seconds_embed_prompts"].sum()),
            }
        ]
    )


def merge_front_counts(blocks: list[dict]) -> dict:
    skipped: Counter = Counter()
    examples: dict[str, list] = {}
    for b in blocks:
        skipped.update(json.loads(b["skipped"]))
        for reason, found in json.loads(b["examples"]).items():
            examples.setdefault(reason, []).extend(found)
    return {
        "rows_read": sum(b["rows_read"] for b in blocks),
        "good": sum(b["good"] for b in blocks),
        "scored": sum(b["scored"] for b in blocks),
        "truncated": sum(b["truncated"] for b in blocks),
        "skipped": dict(skipped),
        "examples": {r: [m for _, m in sorted(found)[:MAX_EXAMPLES]] for r, found in sorted(examples.items())},
        "seconds": {s: sum(b[f"seconds_{s}"] for b in blocks) for s in ("tokenize", "embed_prompts")},
    }


def shard_stats(rows: pd.DataFrame) -> dict:
    return {
        "rows": len(rows),
        "responses_by_origin": dict(Counter(o for origins in rows["origins"] for o in origins)),
        "duplicate_negatives_dropped": int(rows["duplicate_negatives"].sum()) if "duplicate_negatives" in rows else 0,
        "equal_score_rows": int(sum(1 for d in rows["deviation"] if len(d) and max(d) <= 0)),
        "generated_tokens": int(rows["generated_tokens"].sum()) if "generated_tokens" in rows else 0,
        "seconds": {c[len("seconds_") :]: float(rows[c].sum()) for c in rows.columns if c.startswith("seconds_")},
    }


def summarize(manifest: Manifest, wall: float) -> dict:
    """The job's report, from the manifest alone (so a finished run reports the same without recomputing)."""
    source = manifest.source
    seconds: Counter = Counter(source["seconds"])
    seconds["groups"] = source["grouping"]["seconds"]
    origins: Counter = Counter()
    generated = duplicates = equal = 0
    for entry in manifest.shards.values():
        st = entry["stats"]
        origins.update(st["responses_by_origin"])
        duplicates += st["duplicate_negatives_dropped"]
        equal += st["equal_score_rows"]
        generated += st["generated_tokens"]
        seconds.update(st["seconds"])
    skipped = dict(source["skipped"])
    if source["filtered"]:
        skipped["other_split"] = source["filtered"]
    gen_seconds = seconds.get("autoregressive", 0.0)
    return {
        "rows_in": source["rows_read"],
        "rows_out": sum(e["rows"] for e in manifest.shards.values()),
        "duplicate_negatives_dropped": duplicates,
        "equal_score_rows": equal,
        "groups": sum(e["groups"] for e in manifest.shards.values()),
        "shards": len(manifest.shards),
        "shards_dir": str(manifest.directory),
        "shard_writers": sorted({e.get("node") or "" for e in manifest.shards.values()}),
        "skipped": skipped,
        "truncated_responses": source["truncated"],
        "responses_by_origin": dict(origins),
        "negatives_by_type": {
            k: v for k, v in origins.items() if k in ("autoregressive", "meanfield", "truncation", "batch")
        },
        "buckets": source["grouping"]["buckets"],
        "mean_within_group_similarity": source["grouping"]["mean_within_group_similarity"],
        "seconds_per_stage": {k: round(seconds[k], 3) for k in STAGE_ORDER if k in seconds},
        "generator_start_seconds": seconds.get("generator_start", 0.0),
        "generated_tokens": generated,
        "generation_tokens_per_second": generated / gen_seconds if gen_seconds else None,
        "reward": source["reward"],
        "wall_seconds": wall,
        "source": source,
    }


def summary_table(report: dict) -> str:
    lines = [
        f"{'rows in':<28}{report['rows_in']:>12}",
        f"{'rows out':<28}{report['rows_out']:>12}",
        f"{'contrast groups':<28}{report['groups']:>12}",
        f"{'shards':<28}{report['shards']:>12}",
        f"{'group cosine similarity':<28}{report['mean_within_group_similarity']:>12.3f}",
    ]
    lines += [f"{'skipped: ' + k:<28}{v:>12}" for k, v in sorted(report["skipped"].items())]
    if report["truncated_responses"]:
        lines.append(f"{'responses truncated':<28}{report['truncated_responses']:>12}")
    lines += [f"{'responses: ' + k:<28}{v:>12}" for k, v in sorted(report["responses_by_origin"].items())]
    lines += [
        f"{'negatives equal to anchor':<28}{report['duplicate_negatives_dropped']:>12}",
        f"{'rows with all-equal scores':<28}{report['equal_score_rows']:>12}",
    ]
    lines += [f"{'seconds: ' + k:<28}{v:>12.2f}" for k, v in report["seconds_per_stage"].items()]
    if report["generation_tokens_per_second"]:
        lines.append(f"{'generation tokens/s':<28}{report['generation_tokens_per_second']:>12.1f}")
    lines.append(f"{'wall seconds':<28}{report['wall_seconds']:>12.1f}")
    return "\n".join(lines)


def summary_lines(report: dict) -> str:
    """The console's short form of :func:`summary_table`: what went in and out, and every skipped row's reason."""
    responses = ", ".join(f"{k} {v}" for k, v in sorted(report["responses_by_origin"].items()))
    lines = [
        f"[prepare] {report['rows_in']} rows in, {report['rows_out']} out -> {report['groups']} contrast groups in "
        f"{report['shards']} shards, {report['wall_seconds']:.0f} s; responses: {responses}"
    ]
    if report["skipped"]:
        lines.append(
            "[prepare] skipped rows: "
            + ", ".join(f"{k} {v}" for k, v in sorted(report["skipped"].items()))
            + " (reasons and examples in report.json)"
        )
    if report["truncated_responses"]:
        lines.append(f"[prepare] {report['truncated_responses']} responses truncated to model.max_length")
    return "\n".join(lines)
