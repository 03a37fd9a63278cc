"""Adam's moments survive a change in the number of workers: saved by 2 DeepSpeed ranks, restored on 1, equal
within 1e-6, under ZeRO-2 and ZeRO-3 (real DeepSpeed on CPU, gloo, no Ray); and checkpointing does not put a full
copy of them on a rank other than the one that writes them."""

from __future__ import annotations

import ctypes
import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_kb(field: str) -> int:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1])


def _peak_growth_mb(work) -> float:
    """How far ``work()`` raises this process's peak resident memory above its resident memory before."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # memory freed by the training steps goes back first: it would hide growth
    rss = _rss_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) restarts from now
    work()
    return (_rss_kb("VmHWM") - rss) / 1024


def _rank(rank: int, world: int, port: int, stage: int, directory: str, mode: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        DS_ACCELERATOR="cpu",
    )
    torch.set_num_threads(1)
    import deepspeed
    import torch.distributed as dist
    from transformers import LlamaConfig, LlamaForCausalLM

    from configs.train import DeepSpeedConfig
    from tests.zoo import tokenizer_like
    from training import checkpointing
    from training.engine import deepspeed_config

    dist.init_process_group("gloo", rank=rank, world_size=world)
    tokenizer = tokenizer_like("plain")
    # ~10M parameters: their moments (~90 MB) stand well above the noise of a process's resident memory
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=512,
            intermediate_size=1024,
            num_hidden_layers=4,
            num_attention_heads=8,
            num_key_value_heads=8,
            attn_implementation="eager",
        )
    )
    config = deepspeed_config(
        DeepSpeedConfig(zero_stage=stage),
        micro_batch=1,
        grad_accum=1,
        world_size=world,
        lr=1e-2,
        weight_decay=0.0,
        device=torch.device("cpu"),
    )
    engine, *_ = deepspeed.initialize(
        model=model, model_parameters=[p for p in model.parameters() if p.requires_grad], config=config
    )
    out = Path(directory)
    if mode == "save":
        for step in range(3):
            ids = torch.randint(3, len(tokenizer), (1, 12), generator=torch.Generator().manual_seed(10 * step + rank))
            engine.backward(engine(input_ids=ids, labels=ids).loss)
            engine.step()
        growth_mb = _peak_growth_mb(lambda: checkpointing.write(out / "ckpt", engine, tokenizer, rank, world, 3, {}))
        # the control: every rank holding the full moments, as checkpoints did before (a collective under ZeRO-3)
        kept: dict = {}
        control_mb = _peak_growth_mb(lambda: kept.update(checkpointing.full_moments(engine, keep=True)))
        moments_mb = (
            sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if p.requires_grad) * 4 * 2 / 2**20
        )
        (out / f"memory_rank{rank}.json").write_text(
            json.dumps({"growth_mb": growth_mb, "control_growth_mb": control_mb, "moments_mb": moments_mb})
        )
        before = kept
        if rank == 0:
            torch.save({"step": checkpointing.adam_step(engine), "moments": before}, out / "before.pt")
    else:
        state = checkpointing.restore(out / "ckpt", engine, world, lora=False)
        after = dict(checkpointing.full_moments(engine, keep=rank == 0))
        if rank == 0:
            torch.save(
                {"adam": {"step": checkpointing.adam_step(engine), "moments": after}, "moments": state["moments"]},
                out / "after.pt",
            )
    dist.barrier()
    dist.destroy_process_group()


def _run(world: int, stage: int, directory: Path, mode: str) -> None:
    mp.start_processes(
        _rank, args=(world, _free_port(), stage, str(directory), mode), nprocs=world, start_method="spawn"
    )


@pytest.mark.parametrize("stage", [2, 3])
def test_adam_moments_are_restored_on_another_number_of_workers(stage, tmp_path):
    _run(2, stage, tmp_path, "save")
    _run(1, stage, tmp_path, "restore")
    before = torch.load(tmp_path / "before.pt", weights_only=True)
    after = torch.load(tmp_path / "after.pt", weights_only=True)
    assert after["moments"] == "gathered" and after["adam"]["step"] == before["step"] == 3
    assert set(after["adam"]["moments"]) == set(before["moments"])
    for name, saved in before["moments"].items():
        for key in ("exp_avg", "exp_avg_sq"):
            assert saved[key].abs().max() > 0, f"{name} {key} was never updated: the test would prove nothing"
            torch.testing.assert_close(after["adam"]["moments"][name][key], saved[key], atol=1e-6, rtol=0)


@pytest.mark.parametrize("stage", [2, 3])
def test_a_rank_that_does_not_write_the_moments_never_holds_them_all(stage, tmp_path):
    _run(2, stage, tmp_path, "save")
    other = json.loads((tmp_path / "memory_rank1.json").read_text())
    writer = json.loads((tmp_path / "memory_rank0.json").read_text())
    print(
        f"ZeRO-{stage} checkpoint, peak memory growth: rank 1 {other['growth_mb']:.1f} MB, rank 0 "
        f"{writer['growth_mb']:.1f} MB; holding the full moments (the control): {other['control_growth_mb']:.1f} MB "
        f"of {other['moments_mb']:.1f} MB"
    )
    assert other["control_growth_mb"] > 0.75 * other["moments_mb"]  # the measurement sees a full copy
    assert (
        other["growth_mb"] < 0.5 * other["moments_mb"]
    )  # its own partition of DeepSpeed's state and one parameter at a time
