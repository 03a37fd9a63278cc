"""Adam's moments survive a change in the number of workers: saved by 2 DeepSpeed ranks, restored on 1, equal
within 1e-6, under ZeRO-2 and ZeRO-3 (real DeepSpeed on CPU, gloo, no Ray)."""
from __future__ import annotations

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


def _rank(rank: int, world: int, port: int, stage: int, directory: str, mode: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), DS_ACCELERATOR="cpu")
    torch.set_num_threads(1)
    import deepspeed
    import torch.distributed as dist

    from configs.schema import DeepSpeedConfig
    from tests.zoo import build_model, tokenizer_like
    from training import checkpointing
    from training.engine import deepspeed_config

    dist.init_process_group("gloo", rank=rank, world_size=world)
    tokenizer = tokenizer_like("plain")
    model = build_model("llama", len(tokenizer), attn_implementation="eager")
    config = deepspeed_config(DeepSpeedConfig(zero_stage=stage), micro_batch=1, grad_accum=1, world_size=world,
                              lr=1e-2, weight_decay=0.0, device=torch.device("cpu"))
    engine, *_ = deepspeed.initialize(model=model, model_parameters=[p for p in model.parameters() if p.requires_grad],
                                      config=config)
    out = Path(directory)
    if mode == "save":
        for step in range(3):
            ids = torch.randint(3, len(tokenizer), (1, 12), generator=torch.Generator().manual_seed(10 * step + rank))
            engine.backward(engine(input_ids=ids, labels=ids).loss)
            engine.step()
        checkpointing.write(out / "ckpt", engine, tokenizer, rank, world, 3, {})
        if rank == 0:
            torch.save(checkpointing.full_adam_state(engine), out / "before.pt")
        else:
            checkpointing.full_adam_state(engine)  # collective under ZeRO-3
    else:
        state = checkpointing.restore(out / "ckpt", engine, world, lora=False)
        after = checkpointing.full_adam_state(engine)
        if rank == 0:
            torch.save({"adam": after, "moments": state["moments"]}, out / "after.pt")
    dist.barrier()
    dist.destroy_process_group()


def _run(world: int, stage: int, directory: Path, mode: str) -> None:
    mp.start_processes(_rank, args=(world, _free_port(), stage, str(directory), mode), nprocs=world, start_method="spawn")


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
