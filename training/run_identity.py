"""What makes a training run what it is: a re-run with the same identity continues from its latest checkpoint.

The identity is what the run trains on and the math it does: the shards, the loss and its hyperparameters, the
learning-rate schedule, the global batch, precision and ZeRO stage, LoRA, the seed. How the work is laid out
(workers, CPUs per worker, micro-batches, packing) and how often it is logged or checkpointed are not part of it,
so changing them never restarts a run.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from configs.schema import Config

LAYOUT_KEYS = frozenset(
    {
        "num_workers",
        "cpus_per_worker",
        "micro_groups",
        "pack_tokens",
        "checkpoint_every",
        "keep_checkpoints",
        "max_failures",
        "log_every",
    }
)
IDENTITY_FILE = "run_identity.json"


def _flatten(tree: dict, prefix: str) -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def identity(cfg: Config, shards_hash: str) -> dict:
    """The settings that identify a run, as dotted keys."""
    train = {k: v for k, v in cfg.train.model_dump(mode="json").items() if k not in LAYOUT_KEYS}
    return {"seed": cfg.seed, "shards": shards_hash, **_flatten(train, "train.")}


def run_name(cfg: Config, job: str, settings: dict) -> str:
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    return f"{cfg.name}-{job.replace('/', '-')}-{digest}"


def changed_keys(before: dict, after: dict) -> list[str]:
    """Keys whose values differ (or exist on one side only), sorted."""
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def record(job_dir: Path, settings: dict) -> str | None:
    """Store ``settings`` as the job directory's run identity; a line naming what changed when an earlier run there
    had another one (the run then starts from step 0), else None."""
    path = job_dir / IDENTITY_FILE
    note = None
    if path.is_file():
        before = json.loads(path.read_text())
        keys = changed_keys(before, settings)
        if keys:
            shown = ", ".join(f"{k} {before.get(k)!r} -> {settings.get(k)!r}" for k in keys[:6])
            more = f" and {len(keys) - 6} more" if len(keys) > 6 else ""
            note = (
                f"settings that change the math differ from the last run in {job_dir}: {shown}{more}; "
                "starting from step 0"
            )
    path.write_text(json.dumps(settings, indent=2, sort_keys=True))
    return note
