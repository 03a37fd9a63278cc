"""Training checkpoints: DeepSpeed state, a ``save_pretrained`` model, the step, and Adam's moments in a form that
does not depend on the number of workers.

ZeRO 1-3 partitions the optimizer state by rank, so DeepSpeed's own optimizer files load only on the world size
that wrote them. Each checkpoint therefore also holds every trainable parameter's full fp32 ``exp_avg`` and
``exp_avg_sq`` and Adam's step count (gathered with DeepSpeed's ``safe_get_full_optimizer_state``); a run restored
on another number of workers loads the weights from DeepSpeed's files and puts the moments back into its own
partitions (``safe_set_full_optimizer_state``), so it continues with the optimizer where it stopped.
"""
from __future__ import annotations

import json
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.utils import safe_get_full_optimizer_state, safe_set_full_optimizer_state

STATE = "train_state.json"
ADAM = "adam_moments.pt"
MOMENTS = ("exp_avg", "exp_avg_sq")


def _trainable(engine) -> list[tuple[str, torch.nn.Parameter]]:
    return [(name, p) for name, p in engine.module.named_parameters() if p.requires_grad]


def _adam(engine):
    """The torch optimizer under DeepSpeed's ZeRO wrapper (or the optimizer itself without ZeRO)."""
    return getattr(engine.optimizer, "optimizer", engine.optimizer)


def full_adam_state(engine) -> dict:
    """``{"step": n, "moments": {name: {"exp_avg": t, "exp_avg_sq": t}}}`` with full (unpartitioned) fp32 tensors.
    Every rank must call it (the gathers are collective); each gets the whole state."""
    moments = {name: {key: safe_get_full_optimizer_state(p, key).detach().float().cpu().clone() for key in MOMENTS}
               for name, p in _trainable(engine)}
    steps = [float(s["step"]) for s in _adam(engine).state.values() if "step" in s]
    return {"step": max(steps, default=0.0), "moments": moments}


def set_full_adam_state(engine, state: dict) -> None:
    """Put full moments (from :func:`full_adam_state`, any world size) into this rank's partitions."""
    # torch's Adam creates its state at the first step() and ZeRO 1/2 link each parameter to its slice of that
    # state then; a restored engine has taken no step, so create the (zero) state and link it now.
    adam = _adam(engine)
    # ZeRO-3 hands its fp32 partitions to the optimizer only for the length of a step.
    flats = [p for group in adam.param_groups for p in group["params"]]
    flats += getattr(engine.optimizer, "fp32_partitioned_groups_flat", [])
    for flat in flats:
        if "exp_avg" not in adam.state[flat]:
            adam.state[flat].update(step=torch.tensor(0.0), exp_avg=torch.zeros_like(flat), exp_avg_sq=torch.zeros_like(flat))
    link = getattr(engine.optimizer, "_lazy_init_hp_params_optimizer_state", None)
    if link is not None:
        link()
    for name, p in _trainable(engine):
        for key in MOMENTS:
            safe_set_full_optimizer_state(p, state["moments"][name][key], key)
    for flat_state in adam.state.values():
        flat_state["step"] = torch.tensor(state["step"])


def write(directory: Path, engine, tokenizer, rank: int, world: int, step: int, extra: dict) -> None:
    """Every rank writes its DeepSpeed state; rank 0 adds the model, the step and the world-size-free moments."""
    engine.save_checkpoint(str(directory / "deepspeed"), tag="state", exclude_frozen_parameters=True)
    adam = full_adam_state(engine) if engine.zero_optimization_stage() > 0 else None
    with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), enabled=engine.zero_optimization_stage() == 3):
        if rank == 0:
            engine.module.save_pretrained(directory / "model")
            tokenizer.save_pretrained(directory / "model")
            (directory / STATE).write_text(json.dumps({"step": step, "world_size": world, **extra}))
            if adam is not None:
                torch.save(adam, directory / ADAM)
    if dist.is_initialized():
        dist.barrier()


def restore(directory: Path, engine, world: int, lora: bool) -> dict:
    """Load a checkpoint written by :func:`write` on any number of workers; returns its state (step, ...) with
    ``moments``: how Adam's state came back (``"deepspeed"``, ``"gathered"`` or ``"none"``)."""
    state = json.loads((directory / STATE).read_text())
    same_world = state["world_size"] == world or engine.zero_optimization_stage() == 0  # unpartitioned: any size
    engine.load_checkpoint(str(directory / "deepspeed"), tag="state", load_optimizer_states=same_world,
                           load_lr_scheduler_states=False, load_module_only=not same_world,
                           load_module_strict=not lora)  # LoRA checkpoints hold the adapters alone
    moments = "deepspeed" if same_world else "none"
    if not same_world and (directory / ADAM).is_file():
        set_full_adam_state(engine, torch.load(directory / ADAM, weights_only=True))
        moments = "gathered"
    return {**state, "moments": moments}
