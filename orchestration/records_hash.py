"""What decides whether prepared shards can be reused: the hash of everything that determines the records, and
nothing that only changes speed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from actors.embedder import default_embedder_dir
from configs.schema import Config
from pipeline.rewards import scorer_file
from pipeline.shards import content_fingerprint

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


FINGERPRINTS = "fingerprints.json"  # per file: size, modification time and SHA-256 of the files records_hash read


def fingerprint_cache(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
