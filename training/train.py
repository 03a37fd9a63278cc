"""Preference training: Ray Train workers running DeepSpeed on prepared shards, with checkpoints and resume.

Data position is addressed: the global batch of step ``s`` is a fixed slice of a seeded per-epoch
permutation of contrast groups, and worker ``r`` of ``W`` trains its ``1/W`` of it, reading just those
groups from the shards a step ahead of use (``training/group_reader.py``), so worker memory does not
grow with the dataset. A run restored at step ``s`` (after a failure, on a re-run, or on a different
number of workers) therefore continues with exactly the groups it had not trained, and the global
batch stays the same size whatever ``W`` is: gradient accumulation makes up the difference.
"""

from __future__ import annotations

import csv
import json
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import deepspeed
import numpy as np
import pandas as pd
import ray
import ray.train
import torch
import torch.distributed as dist
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig
from ray.train.torch import TorchTrainer
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from actors.device import load_on_device
from configs.schema import Config
from pipeline import storage
from pipeline.shards import read_manifest, verified_shard_files
from pipeline.tokenize import pad_token_id
from training import checkpointing, run_identity
from training.batches import Batch, collate, record_reference, with_recorded_reference
from training.engine import (
    deepspeed_config,
    load_for_training,
    lr_at,
    set_lr,
    set_worker_threads,
    trainer_resources,
)
from training.group_reader import GroupReader, Prefetcher, split_heldout
from training.logprobs import (
    ForwardPlan,
    check_architecture,
    forward_plan,
    packed_logps,
)
from training.lora import export_merged, with_lora
from training.objective import preference_loss
from training.progress import Progress, peak_rss_mb
from training.trackers import Trackers, check_installed


def step_groups(train_ids: list[int], batch_groups: int, seed: int, step: int) -> list[int]:
    """The contrast groups of optimizer step ``step``: a slice of the epoch's seeded permutation."""
    per_epoch = len(train_ids) // batch_groups
    if per_epoch == 0:
        raise ValueError(f"train.batch_groups={batch_groups} is more than the {len(train_ids)} training groups")
    epoch, k = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(len(train_ids))
    return [train_ids[i] for i in perm[k * batch_groups : (k + 1) * batch_groups]]


def _sequence_values(engine, ref_model, batch: Batch, live_reference: bool, plan: ForwardPlan):
    policy = batch.gather(packed_logps(engine, batch.packed, plan))
    if live_reference:
        with torch.no_grad():
            ref = batch.gather(packed_logps(ref_model, batch.packed, plan))
    else:
        ref = batch.ref_logps
    counts = batch.gather(batch.packed.response_lengths.float())
    return policy, ref, counts


def heldout_share(held_ids: list[int], rank: int, world: int, micro_groups: int) -> list[list[int] | None]:
    """This rank's micro-batches of held-out groups: every rank gets the same number (ZeRO-3's forward is a
    collective), ranks short of groups repeat the first held-out group as ``None`` entries that do not count."""
    mine = held_ids[rank::world]
    n = -(-len(held_ids[0::world]) // micro_groups)
    chunks = [mine[i : i + micro_groups] for i in range(0, len(mine), micro_groups)]
    return chunks + [None] * (n - len(chunks))


def heldout_batches(
    held_ids: list[int], rank: int, world: int, micro_groups: int, load
) -> Iterator[tuple[bool, list[int], Batch]]:
    """This rank's held-out micro-batches (:func:`heldout_share`) as ``(counts toward the figures, group ids,
    load(ids))``, each read and collated when the evaluation reaches it: no held-out batch stays in memory, or on the
    device, between evaluations, however large the held-out set."""
    for ids in heldout_share(held_ids, rank, world, micro_groups):
        ids, counts = (ids, True) if ids is not None else (held_ids[:1], False)
        yield counts, ids, load(ids)


# Per-step and held-out figures: sums over micro-batches and ranks (objective.preference_loss's metrics), then ratios.
RATIOS = {
    "accuracy": ("accuracy_correct", "accuracy_pairs"),
    "lc_accuracy": ("lc_correct", "lc_pairs"),
    "reward_length_corr": ("length_corr_sum", "length_corr_prompts"),
    "top_response_tokens": ("top_tokens_sum", "top_prompts"),
}
SUMMED = (
    "loss",
    "prompts",
    "skipped_prompts",
    "tokens",
    "computed_tokens",
    "response_tokens",
    *(k for pair in RATIOS.values() for k in pair),
)


SATURATED_GRAD = 1e-7
_LISTWISE = (
    "Likely cause: within each prompt the implicit rewards of positives and negatives are farther apart than "
    "the softmax resolves (beta x |log-prob ratio| of summed log-probs); lower train.beta or set "
    "train.reward_normalization: mean."
)
_PAIRWISE = "Likely cause: every pair's margin is far past the sigmoid's knee; lower train.beta."
SATURATION_CAUSE = {
    "swepo": _LISTWISE,
    "infonca": _LISTWISE,
    "nca": _LISTWISE,
    "cpo": _LISTWISE,
    **{loss: _PAIRWISE for loss in ("dpo", "robust_dpo", "nca_pair", "rpo")},
}


def _ratios(total: dict) -> dict[str, float]:
    return {name: total[num] / max(total[den], 1) for name, (num, den) in RATIOS.items()}


@torch.no_grad()
def heldout_metrics(
    engine,
    ref_model,
    batches: Iterable[tuple[bool, list[int], Batch]],
    cfg: Config,
    plan: ForwardPlan,
    live: bool = False,
    record: dict | None = None,
) -> dict[str, float]:
    """Implicit-reward accuracy and the length figures of :data:`RATIOS` on the held-out groups, each rank
    scoring its share, summed over ranks; the reference is the batches' ``ref_logps``, or ``ref_model`` when
    ``live``. With ``record`` (step 0, where the policy is the reference), the policy's
    log-probs are kept there as the held-out reference of every later evaluation: the reference and the policy are
    then scored by the same forward, in the same precision and batch layout, so the figures compare the models and
    not two numerics (the start is exactly 0.5)."""
    sums: Counter = Counter()
    engine.eval()
    for counts_toward, ids, batch in batches:
        policy, ref, counts = _sequence_values(engine, ref_model, batch, live and record is None, plan)
        if record is not None:
            ref = policy
            if counts_toward:
                record_reference(record, ids, batch, policy)
        _, m = preference_loss(cfg.train, batch, policy, ref, counts)
        if counts_toward:
            sums.update(m)
    engine.train()
    keys = [k for pair in RATIOS.values() for k in pair]
    return _ratios(dict(zip(keys, _all_sum([float(sums[k]) for k in keys]))))


def _all_sum(values: list[float], op=dist.ReduceOp.SUM) -> list[float]:
    """Sums (or ``op``) over the ranks, on the device the process group reduces on (NCCL: the worker's GPU)."""
    t = torch.tensor(
        values, dtype=torch.float64, device=ray.train.torch.get_device() if dist.is_initialized() else None
    )
    if dist.is_initialized():
        dist.all_reduce(t, op=op)
    return t.tolist()


def _gathered(record: dict) -> dict:
    """The union over ranks of each rank's part of ``record``."""
    if not dist.is_initialized():
        return record
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, record)
    return {k: v for part in parts for k, v in part.items()}


def train_worker_loop(lc: dict) -> None:
    cfg = Config.model_validate(lc["config"])
    tc = cfg.train
    ctx = ray.train.get_context()
    world, rank = ctx.get_world_size(), ctx.get_world_rank()
    set_worker_threads(tc.cpus_per_worker)
    job_dir, job_store = Path(lc["job_dir"]), lc["job_store"]
    job_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:  # a restored run on another machine continues the metrics and logs kept in output_dir
        job_store.pull(job_dir, skip=EXPORTS)
    tokenizer = AutoTokenizer.from_pretrained(lc["policy_dir"])

    device = ray.train.torch.get_device()
    reader = lc["reader"](lc["shard_files"], tc.max_responses)
    train_ids, held_ids = split_heldout(reader.group_ids, tc.heldout_fraction, cfg.seed)

    per_worker = tc.batch_groups // world
    accum = per_worker // tc.micro_groups
    ds_config = deepspeed_config(
        tc.deepspeed,
        micro_batch=tc.micro_groups,
        grad_accum=accum,
        world_size=world,
        lr=tc.lr,
        weight_decay=tc.weight_decay,
        device=device,
    )
    model = load_for_training(lc["policy_dir"], tc.deepspeed, device)
    if tc.lora:
        model = with_lora(model, tc.lora)
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=trainable, config=ds_config)
    plan = forward_plan(engine.module)  # after initialize: ZeRO-3 partitions the head's weight away
    pad_id = pad_token_id(tokenizer, engine.module.get_input_embeddings().num_embeddings)
    row_tokens = cfg.pack_row_tokens()

    heldout_reference: dict[int, list[list[float]]] = {}  # per held-out group: step 0's log-probs (heldout_metrics)

    def load_heldout(ids: list[int]) -> Batch:
        groups = reader.read(ids)
        if heldout_reference:
            groups = with_recorded_reference(groups, heldout_reference)
        return collate(groups, pad_id, row_tokens, plan.share_prompts).to(device)

    def heldout():
        return heldout_batches(held_ids, rank, world, tc.micro_groups, load_heldout)

    def step_batches(step: int) -> tuple[list[int], list[Batch]]:
        """This worker's groups of optimizer step ``step``, read from the shards and collated per micro-batch."""
        mine = step_groups(train_ids, tc.batch_groups, cfg.seed, step)[rank * per_worker : (rank + 1) * per_worker]
        groups = reader.read(mine)
        return mine, [
            collate(groups[m * tc.micro_groups : (m + 1) * tc.micro_groups], pad_id, row_tokens, plan.share_prompts)
            for m in range(accum)
        ]

    ref_model = None
    if tc.reference == "live":
        ref_model = (
            load_on_device(AutoModelForCausalLM, lc["policy_dir"], tc.deepspeed.dtype, device)
            .eval()
            .requires_grad_(False)
        )

    start, acc_start = 0, None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = checkpointing.restore(Path(d), engine, world, bool(tc.lora))
        start, acc_start = state["step"], state["heldout_accuracy_start"]
        heldout_reference.update({int(g): v for g, v in state.get("heldout_reference", {}).items()})
        if rank == 0:
            print(
                f"[train] restored step {start} (saved by {state['world_size']} workers, now {world}; "
                f"Adam moments: {state['moments']})",
                flush=True,
            )
    if acc_start is None:
        recorded: dict[int, list[list[float]]] = {}
        acc_start = heldout_metrics(engine, ref_model, heldout(), cfg, plan, record=recorded)["accuracy"]
        heldout_reference.update(_gathered(recorded))  # every rank: a restore may split the held-out set anew

    trackers = progress = None
    if rank == 0:
        trackers = Trackers(cfg, lc["job"], job_dir, resume_step=start)
        if not start:
            trackers.log({"heldout/accuracy": acc_start}, 0)
        progress = Progress("train", tc.steps, "steps", start=start)
        print(
            f"[train] {plan.describe()}; {n_trainable:,} trainable parameters" + (" (LoRA)" if tc.lora else ""),
            flush=True,
        )
        print(
            f"[train] {tc.loss}: {len(train_ids)} training groups, {len(held_ids)} held out; {world} workers x "
            f"{accum} micro-batches of {tc.micro_groups} groups; steps {start}..{tc.steps}; "
            f"held-out accuracy at start {acc_start:.3f}",
            flush=True,
        )
    # Which groups each step trained, per attempt: a restored run redoes the steps after its checkpoint.
    # A run that starts from step 0 (new settings, or a failure before the first checkpoint) starts its logs afresh.
    if rank == 0:
        _truncate_metrics(job_dir / "metrics.csv", start)
    data_log_name = f"data_rank{rank}.jsonl"
    data_log = open(job_dir / data_log_name, "a" if start else "w")
    attempt = _all_sum([time.time() if rank == 0 else 0.0])[0]  # one id shared by the ranks of this attempt

    saturated = False  # said once per attempt
    prefetch = Prefetcher(step_batches)  # step s + 1 is read and collated while step s trains
    for step in range(start, tc.steps):
        started = time.perf_counter()
        lr = lr_at(step, tc.steps, tc.warmup_steps, tc.lr)
        set_lr(engine, lr)
        mine, batches = prefetch.get(step, step + 1 if step + 1 < tc.steps else None)
        sums: Counter = Counter()
        for batch in batches:
            batch = batch.to(device)
            policy, ref, counts = _sequence_values(engine, ref_model, batch, tc.reference == "live", plan)
            loss, metrics = preference_loss(tc, batch, policy, ref, counts)
            engine.backward(loss)
            engine.step()
            sums.update(
                {
                    **metrics,
                    "loss": metrics["loss"] * metrics["prompts"],
                    "tokens": batch.packed.tokens,
                    "computed_tokens": batch.packed.computed_tokens,
                    "response_tokens": int(batch.packed.response_lengths.sum()),
                }
            )
        data_log.write(
            json.dumps({"step": step, "rank": rank, "world": world, "attempt": attempt, "groups": mine}) + "\n"
        )
        data_log.flush()
        total = dict(zip(SUMMED, _all_sum([float(sums[k]) for k in SUMMED])))
        seconds = time.perf_counter() - started
        row = {
            "step": step + 1,
            "loss": total["loss"] / max(total["prompts"], 1),
            **_ratios(total),
            "skipped_prompts": int(total["skipped_prompts"]),
            "grad_norm": float(engine.get_global_grad_norm() or 0.0),
            "lr": lr,
            "tokens_per_second": total["tokens"] / seconds,
            "computed_tokens_per_second": total["computed_tokens"] / seconds,
            "response_tokens_per_second": total["response_tokens"] / seconds,
            "seconds": seconds,
            "world_size": world,
            "worker_peak_rss_mb": _all_sum([peak_rss_mb()], op=dist.ReduceOp.MAX)[0],
        }
        if rank == 0:
            _log(job_dir, trackers, row, tc.log_every)
            progress.update(
                row["step"],
                loss=f"{row['loss']:.4f}",
                acc=f"{row['accuracy']:.3f}",
                **{"tok/s": f"{row['tokens_per_second']:.0f}"},
            )
            if not saturated and row["grad_norm"] < SATURATED_GRAD and total["prompts"] > total["skipped_prompts"]:
                saturated = True
                print(
                    f"[train] step {row['step']}: loss {row['loss']:.4g} with gradient norm {row['grad_norm']:.1e}: "
                    f"the loss is saturated, so these steps teach nothing. " + SATURATION_CAUSE.get(tc.loss, ""),
                    flush=True,
                )
        done = step + 1 == tc.steps
        if (step + 1) % tc.checkpoint_every == 0 or done:
            held = heldout_metrics(
                engine, ref_model, heldout(), cfg, plan, live=tc.reference == "live" and not heldout_reference
            )
            if rank == 0:
                trackers.log({f"heldout/{k}": v for k, v in held.items()}, step + 1)
                print(
                    f"[train] checkpoint at step {step + 1}: held-out implicit-reward accuracy {held['accuracy']:.3f}, "
                    f"length-controlled {held['lc_accuracy']:.3f}",
                    flush=True,
                )
            extra = {f"heldout_{k}_end": v for k, v in held.items()} if done else {}
            state = {"heldout_accuracy_start": acc_start, "heldout_reference": heldout_reference}
            data_log.flush()
            job_store.push(job_dir, only=None if rank == 0 else data_log_name)  # metrics and logs, with each checkpoint
            _checkpoint(
                engine,
                tokenizer,
                rank,
                world,
                step + 1,
                bool(tc.lora),
                state,
                {**row, **extra, "heldout_accuracy_start": acc_start, "trainable_parameters": n_trainable},
            )
    prefetch.close()
    data_log.close()
    if trackers:
        trackers.close()
    job_store.push(job_dir, only=None if rank == 0 else data_log_name)


def _truncate_metrics(path: Path, start: int) -> None:
    """Keep only the rows of steps up to ``start``: the steps after it are about to be redone."""
    if path.is_file():
        kept = pd.read_csv(path).query("step <= @start") if start else None
        if kept is None or kept.empty:
            path.unlink()
        else:
            kept.to_csv(path, index=False)


def _log(job_dir: Path, trackers: Trackers, row: dict, log_every: int) -> None:
    path = job_dir / "metrics.csv"
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)
    trackers.log({f"train/{k}": v for k, v in row.items() if k != "step"}, row["step"])
    if row["step"] % log_every == 0 or row["step"] == 1:  # the log's line; the console shows progress
        print(
            f"train: step {row['step']} loss {row['loss']:.4f} acc {row['accuracy']:.3f} grad {row['grad_norm']:.3f} "
            f"lr {row['lr']:.2e} tok/s {row['tokens_per_second']:.0f}",
            flush=True,
        )


def _checkpoint(engine, tokenizer, rank: int, world: int, step: int, lora: bool, state: dict, metrics: dict) -> None:
    """Write the checkpoint on every rank (training/checkpointing.py); Ray merges the ranks' files and keeps them."""
    with tempfile.TemporaryDirectory() as tmp:
        checkpointing.write(Path(tmp), engine, tokenizer, rank, world, step, state, lora)
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))


EXPORTS = ("policy", "adapter")  # what a train job exports into its directory, at its end


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
