"""Preference training, the driver's side: checks before any work, the Ray Train job that runs
:func:`training.worker.train_worker_loop` on DeepSpeed workers, and the export of the trained policy.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from ray.train import CheckpointConfig, FailureConfig, RunConfig
from ray.train.torch import TorchTrainer
from transformers import AutoConfig

from configs.schema import Config
from models.architectures import check_architecture
from pipeline import storage
from pipeline.shards import read_manifest, verified_shard_files
from training import run_identity
from training.engine import trainer_resources
from training.group_reader import GroupReader
from training.lora import export_merged
from training.trackers import check_installed
from training.worker import EXPORTS, train_worker_loop


def refuse_overwriting_the_policy(policy: Path, job_dir: Path) -> None:
    """The trained policy is exported to ``<job_dir>/policy`` (and adapters to ``adapter``), replacing what is there:
    a run that starts from that directory ("continue from my last policy") would delete its own input."""
    policy = policy.resolve()
    for out in (job_dir / "policy", job_dir / "adapter"):
        out = out.resolve()
        if policy == out or out in policy.parents:
            raise ValueError(
                f"model.policy_dir {policy} is where this train job exports its policy ({out}), which "
                f"replaces it: copy the policy elsewhere first, or write this run to another output_dir"
            )


def check_reference_precision(cfg: Config, stored: str | None, shards: storage.Store | Path) -> None:
    """One precision on the whole path: the policy's log-probs are compared with the stored reference's, and summed
    over a response bf16 and fp32 differ by far more than any tie tolerance, so training on shards refuses a
    reference computed in another precision than its own."""
    if cfg.train.reference != "shards" or stored == cfg.train_dtype():
        return
    made = f"were computed in {stored}" if stored else "record no precision (made before prepare recorded it)"
    raise ValueError(
        f"the reference log-probs of {shards} {made}, but training computes in {cfg.train_dtype()} "
        f"(train.deepspeed.dtype={cfg.train.deepspeed.dtype}): set train.deepspeed.dtype to "
        f"{stored or 'the precision of prepare'}, "
        f"re-run prepare with model.dtype={cfg.train_dtype()}, or set train.reference=live"
    )


def run_train(cfg: Config, job: str = "train", reader: type = GroupReader) -> dict:
    """Train ``cfg.train.loss``; results go to ``<output_dir>/<job>`` (the comparison uses one job dir per method).
    ``reader(shard_files, max_responses)`` is how workers get their groups (``group_ids``, ``read(ids)``); the
    memory benchmark passes the whole-dataset loader this one replaced, to measure both in one run."""
    started = time.perf_counter()
    tc = cfg.train
    policy = cfg.policy_dir()
    check_architecture(AutoConfig.from_pretrained(policy))  # before any work: a model that cannot be scored exactly
    check_installed(cfg.tracking.report_to)
    job_dir = storage.job_store(cfg, job).pull(cfg.job_dir(job), skip=EXPORTS).resolve()
    refuse_overwriting_the_policy(policy, job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    # Workers read their own groups from the shard files (training/group_reader.py); no row passes through here.
    shards = storage.job_store(cfg, "prepare") / "shards"
    files = verified_shard_files(shards)
    manifest = read_manifest(shards)
    check_reference_precision(cfg, manifest.get("source", {}).get("ref_logps_dtype"), shards)
    if tc.reference == "shards":
        for f in files:
            if f.read_table(columns=["ref_logps"])["ref_logps"].null_count:
                raise ValueError(
                    f"{f}: rows without reference log-probs; set prepare.ref_logps: true and re-run prepare, "
                    "or train with train.reference: live"
                )
    # Same identity (shards and the math of training), same run name: Ray Train restores a re-run from its latest
    # checkpoint, whatever the number of workers or the log and checkpoint cadence.
    settings = run_identity.identity(cfg, manifest["config_hash"])
    note = run_identity.record(job_dir, settings)
    if note:
        print(f"[train] {note}", flush=True)
    trainer = TorchTrainer(
        train_worker_loop,
        train_loop_config={
            "config": cfg.model_dump(mode="json"),
            "policy_dir": str(policy.resolve()),
            "job_dir": str(job_dir),
            "job_store": storage.job_store(cfg, job),
            "job": job,
            "shard_files": files,
            "reader": reader,
        },
        **trainer_resources(
            tuple(tc.num_workers) if isinstance(tc.num_workers, (list, tuple)) else tc.num_workers,
            tc.cpus_per_worker,
            tc.gpus_per_worker,
        ),
        run_config=RunConfig(
            name=run_identity.run_name(cfg, job, settings),
            **storage.ray_run_storage(cfg),
            checkpoint_config=CheckpointConfig(num_to_keep=tc.keep_checkpoints),
            failure_config=FailureConfig(max_failures=tc.max_failures),
        ),
    )
    result = trainer.fit()
    policy_out = job_dir / "policy"
    with result.checkpoint.as_directory() as d:
        if tc.lora:  # the checkpoint's model is the adapters: keep them, and export them merged into the base
            shutil.rmtree(job_dir / "adapter", ignore_errors=True)
            shutil.copytree(Path(d) / "model", job_dir / "adapter")
            export_merged(policy, job_dir / "adapter", policy_out)
        else:
            shutil.rmtree(policy_out, ignore_errors=True)
            shutil.copytree(Path(d) / "model", policy_out)
    storage.job_store(cfg, job).push(job_dir)
    m = result.metrics
    return {
        "loss": tc.loss,
        "optimizer_steps": m["step"],
        "heldout_accuracy_start": m["heldout_accuracy_start"],
        "heldout_accuracy_end": m["heldout_accuracy_end"],
        "heldout_lc_accuracy_end": m["heldout_lc_accuracy_end"],
        "heldout_reward_length_corr_end": m["heldout_reward_length_corr_end"],
        "heldout_top_response_tokens_end": m["heldout_top_response_tokens_end"],
        "final_train_loss": m["loss"],
        "final_train_accuracy": m["accuracy"],
        "tokens_per_second": m["tokens_per_second"],
        "worker_peak_rss_mb": m["worker_peak_rss_mb"],
        "policy_dir": str(policy_out),
        "adapter_dir": str(job_dir / "adapter") if tc.lora else None,
        "trainable_parameters": m.get("trainable_parameters"),
        "checkpoint": result.checkpoint.path,
        "metrics_csv": str(job_dir / "metrics.csv"),
        "tensorboard_dir": str(job_dir / "tensorboard"),
        "wall_seconds": time.perf_counter() - started,
    }
