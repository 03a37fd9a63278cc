"""The preference trainer's worker loop (one Ray Train worker, DeepSpeed): reads its groups, trains, checkpoints.

Data position is addressed: the global batch of step ``s`` is a fixed slice of a seeded per-epoch
permutation of contrast groups, and worker ``r`` of ``W`` trains its ``1/W`` of it, reading just those
groups from the shards a step ahead of use (``training/group_reader.py``), so worker memory does not
grow with the dataset. A run restored at step ``s`` (after a failure, on a re-run, or on a different
number of workers) therefore continues with exactly the groups it had not trained, and the global
batch stays the same size whatever ``W`` is: gradient accumulation makes up the difference.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import deepspeed
import numpy as np
import ray
import ray.train
import torch.distributed as dist
from ray.train import Checkpoint
from transformers import AutoModelForCausalLM, AutoTokenizer

from actors.device import load_on_device
from configs.schema import Config
from models.architectures import forward_plan
from pipeline.tokenize import pad_token_id
from training import checkpointing
from training.batches import Batch, collate, with_recorded_reference
from training.collectives import all_sum, gathered
from training.engine import deepspeed_config, load_for_training, lr_at, set_lr, set_worker_threads
from training.group_reader import Prefetcher, split_heldout
from training.heldout_metrics import SUMMED, heldout_batches, heldout_metrics, ratios, sequence_values
from training.lora import with_lora
from training.objective import preference_loss
from training.progress import Progress, peak_rss_mb
from training.step_log import SATURATED_GRAD, SATURATION_CAUSE, log_step, truncate_metrics
from training.trackers import Trackers

EXPORTS = ("policy", "adapter")  # what a train job exports into its directory, at its end


def step_groups(train_ids: list[int], batch_groups: int, seed: int, step: int) -> list[int]:
    """The contrast groups of optimizer step ``step``: a slice of the epoch's seeded permutation."""
    per_epoch = len(train_ids) // batch_groups
    if per_epoch == 0:
        raise ValueError(f"train.batch_groups={batch_groups} is more than the {len(train_ids)} training groups")
    epoch, k = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(len(train_ids))
    return [train_ids[i] for i in perm[k * batch_groups : (k + 1) * batch_groups]]


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
        heldout_reference.update(gathered(recorded))  # every rank: a restore may split the held-out set anew

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
        truncate_metrics(job_dir / "metrics.csv", start)
    data_log_name = f"data_rank{rank}.jsonl"
    data_log = open(job_dir / data_log_name, "a" if start else "w")
    attempt = all_sum([time.time() if rank == 0 else 0.0])[0]  # one id shared by the ranks of this attempt

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
            policy, ref, counts = sequence_values(engine, ref_model, batch, tc.reference == "live", plan)
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
        total = dict(zip(SUMMED, all_sum([float(sums[k]) for k in SUMMED])))
        seconds = time.perf_counter() - started
        row = {
            "step": step + 1,
            "loss": total["loss"] / max(total["prompts"], 1),
            **ratios(total),
            "skipped_prompts": int(total["skipped_prompts"]),
            "grad_norm": float(engine.get_global_grad_norm() or 0.0),
            "lr": lr,
            "tokens_per_second": total["tokens"] / seconds,
            "computed_tokens_per_second": total["computed_tokens"] / seconds,
            "response_tokens_per_second": total["response_tokens"] / seconds,
            "seconds": seconds,
            "world_size": world,
            "worker_peak_rss_mb": all_sum([peak_rss_mb()], op=dist.ReduceOp.MAX)[0],
        }
        if rank == 0:
            log_step(job_dir, trackers, row, tc.log_every)
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
            save_checkpoint(
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


def save_checkpoint(
    engine, tokenizer, rank: int, world: int, step: int, lora: bool, state: dict, metrics: dict
) -> None:
    """Write the checkpoint on every rank (training/checkpointing.py); Ray merges the ranks' files and keeps them."""
    with tempfile.TemporaryDirectory() as tmp:
        checkpointing.write(Path(tmp), engine, tokenizer, rank, world, step, state, lora)
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))
