"""Training checkpoints: DeepSpeed state, a ``save_pretrained`` model, the step, and Adam's moments in a form that
does not depend on the number of workers.

ZeRO 1-3 partitions the optimizer state by rank, so DeepSpeed's own optimizer files load only on the world size
that wrote them. Each checkpoint therefore also holds every trainable parameter's full fp32 ``exp_avg`` and
``exp_avg_sq`` and Adam's step count; a run restored on another number of workers loads the weights from
DeepSpeed's files and puts the moments back into its own partitions (``safe_set_full_optimizer_state``), so it
continues with the optimizer where it stopped.

Nothing is gathered whole: the moments are gathered one parameter at a time (DeepSpeed's
``safe_get_full_optimizer_state``, a collective) and only rank 0 keeps them, writing them to disk in chunks of
at most :data:`CHUNK_BYTES`; a ZeRO-3 model is gathered a layer at a time onto rank 0. The checkpoint memory of a
rank is then one parameter's (rank 0: one chunk), whatever the model's size or the number of workers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist
from deepspeed.utils import safe_get_full_optimizer_state, safe_set_full_optimizer_state

STATE = "train_state.json"
ADAM = "adam_moments"  # a directory of chunk files, each {parameter name: {moment: tensor}}, and index.json
MOMENTS = ("exp_avg", "exp_avg_sq")
CHUNK_BYTES = 256 * 2**20


def _trainable(engine) -> list[tuple[str, torch.nn.Parameter]]:
    return [(name, p) for name, p in engine.module.named_parameters() if p.requires_grad]


def _adam(engine):
    """The torch optimizer under DeepSpeed's ZeRO wrapper (or the optimizer itself without ZeRO)."""
    return getattr(engine.optimizer, "optimizer", engine.optimizer)


def adam_step(engine) -> float:
    """Adam's step count (the same for every parameter)."""
    return max((float(s["step"]) for s in _adam(engine).state.values() if "step" in s), default=0.0)


def full_moments(engine, keep: bool) -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
    """Each trainable parameter's full (unpartitioned) fp32 moments, one parameter at a time. Every rank must walk
    it to the end (each gather is collective); a rank with ``keep`` False gets ``{}`` and frees each gather at once."""
    for name, p in _trainable(engine):
        moments = {key: safe_get_full_optimizer_state(p, key) for key in MOMENTS}
        yield name, ({key: t.detach().float().cpu().clone() for key, t in moments.items()} if keep else {})
        del moments


def write_moments(directory: Path, engine, rank: int) -> None:
    """Stream the full moments to ``directory`` on rank 0, in chunks of at most :data:`CHUNK_BYTES`."""
    if rank == 0:
        directory.mkdir(parents=True)
    chunk, size, files = {}, 0, []

    def flush():
        nonlocal chunk, size
        files.append(f"{len(files):05d}.pt")
        torch.save(chunk, directory / files[-1])
        chunk, size = {}, 0

    for name, moments in full_moments(engine, keep=rank == 0):
        if rank == 0:
            chunk[name] = moments
            size += sum(t.numel() * t.element_size() for t in moments.values())
            if size >= CHUNK_BYTES:
                flush()
    if rank == 0:
        if chunk or not files:
            flush()
        (directory / "index.json").write_text(json.dumps({"step": adam_step(engine), "files": files}))


def set_full_adam_state(engine, directory: Path) -> None:
    """Put full moments (from :func:`write_moments`, any world size) into this rank's partitions, a chunk at a time."""
    # torch's Adam creates its state at the first step() and ZeRO 1/2 link each parameter to its slice of that
    # state then; a restored engine has taken no step, so create the (zero) state and link it now.
    adam = _adam(engine)
    # ZeRO-3 hands its fp32 partitions to the optimizer only for the length of a step.
    flats = [p for group in adam.param_groups for p in group["params"]]
    flats += getattr(engine.optimizer, "fp32_partitioned_groups_flat", [])
    for flat in flats:
        if "exp_avg" not in adam.state[flat]:
            adam.state[flat].update(
                step=torch.tensor(0.0), exp_avg=torch.zeros_like(flat), exp_avg_sq=torch.zeros_like(flat)
            )
    link = getattr(engine.optimizer, "_lazy_init_hp_params_optimizer_state", None)
    if link is not None:
        link()
    index = json.loads((directory / "index.json").read_text())
    params = dict(_trainable(engine))
    for file in index["files"]:
        for name, moments in torch.load(directory / file, weights_only=True, mmap=True).items():
            for key in MOMENTS:
                safe_set_full_optimizer_state(params[name], moments[key], key)
    for flat_state in adam.state.values():
        flat_state["step"] = torch.tensor(index["step"])


def _model_state(engine, lora: bool) -> dict | None:
    """Under ZeRO-3, the model's state dict gathered a layer at a time onto rank 0 (LoRA: the adapters alone; None on
    the other ranks); None under ZeRO 0-2, where every rank holds the whole model and saves its own."""
    if engine.zero_optimization_stage() == 3:
        return engine._zero3_consolidated_16bit_state_dict(exclude_frozen_parameters=lora)
    return None


def write(
    directory: Path, engine, tokenizer, rank: int, world: int, step: int, extra: dict, lora: bool = False
) -> None:
    """Every rank writes its DeepSpeed state; rank 0 adds the model, the step and the world-size-free moments."""
    engine.save_checkpoint(str(directory / "deepspeed"), tag="state", exclude_frozen_parameters=True)
    if engine.zero_optimization_stage() > 0:
        write_moments(directory / ADAM, engine, rank)
    state = _model_state(engine, lora)
    if rank == 0:
        engine.module.save_pretrained(directory / "model", **({"state_dict": state} if state is not None else {}))
        tokenizer.save_pretrained(directory / "model")
        (directory / STATE).write_text(json.dumps({"step": step, "world_size": world, **extra}))
    if dist.is_initialized():
        dist.barrier()


def restore(directory: Path, engine, world: int, lora: bool) -> dict:
    """Load a checkpoint written by :func:`write` on any number of workers; returns its state (step, ...) with
    ``moments``: how Adam's state came back (``"deepspeed"``, ``"gathered"`` or ``"none"``)."""
    state = json.loads((directory / STATE).read_text())
    same_world = state["world_size"] == world or engine.zero_optimization_stage() == 0  # unpartitioned: any size
    engine.load_checkpoint(
        str(directory / "deepspeed"),
        tag="state",
        load_optimizer_states=same_world,
        load_lr_scheduler_states=False,
        load_module_only=not same_world,
        load_module_strict=not lora,
    )  # LoRA checkpoints hold the adapters alone
    moments = "deepspeed" if same_world else "none"
    if not same_world and (directory / ADAM).is_dir():
        set_full_adam_state(engine, directory / ADAM)
        moments = "gathered"
    return {**state, "moments": moments}
