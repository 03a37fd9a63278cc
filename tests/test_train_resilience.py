"""Training survives a killed worker and a lost node, and keeps its data position exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow
STEPS = 24


def _start_train(out: Path, *overrides: str) -> subprocess.Popen:
    sets = [
        a
        for o in (
            f"output_dir={out}",
            f"train.steps={STEPS}",
            "train.checkpoint_every=4",
            "train.log_every=1",
            *overrides,
        )
        for a in ("--set", o)
    ]
    return subprocess.Popen(
        [sys.executable, "-m", "jobs.train", "--config", "configs/tiny.yaml", *sets],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for_checkpoint(out: Path, proc: subprocess.Popen, timeout: float = 900) -> pd.DataFrame:
    """Wait until Ray Train has registered a checkpoint (its snapshot lists one), then return the metrics so far.

    A report still in flight when its worker dies is lost, so the failure must come after registration.
    """
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"train ended before its first checkpoint:\n{proc.stdout.read()[-5000:]}")
        for snapshot in (out / "ray").glob("*/checkpoint_manager_snapshot.json"):
            try:
                registered = json.loads(snapshot.read_text()).get("checkpoint_results")
            except json.JSONDecodeError:
                continue
            if registered:
                return pd.read_csv(out / "train" / "metrics.csv")
        time.sleep(0.1)
    raise AssertionError(f"no checkpoint within {timeout}s")


def _finish(proc: subprocess.Popen) -> str:
    output, _ = proc.communicate(timeout=1200)
    assert proc.returncode == 0, output[-6000:]
    return output


def _trained_groups(out: Path) -> dict[int, list[int]]:
    """Per step, the groups of the attempt that counts: the latest (a restored run redoes the steps after its
    checkpoint)."""
    entries = [
        json.loads(line) for path in (out / "train").glob("data_rank*.jsonl") for line in path.read_text().splitlines()
    ]
    latest = {}
    for e in entries:
        latest[e["step"]] = max(latest.get(e["step"], 0), e["attempt"])
    groups: dict[int, list[int]] = {}
    for e in sorted(entries, key=lambda e: e["rank"]):
        if e["attempt"] == latest[e["step"]]:
            groups.setdefault(e["step"], []).extend(e["groups"])
    return groups


def _check_each_epoch_once(groups_by_step: dict[int, list[int]], batch_groups: int) -> None:
    assert sorted(groups_by_step) == list(range(STEPS))
    assert all(len(g) == batch_groups for g in groups_by_step.values())
    n_train = len({g for gs in groups_by_step.values() for g in gs})
    per_epoch = n_train // batch_groups
    for epoch_start in range(0, STEPS, per_epoch):
        seen = [g for s in range(epoch_start, min(epoch_start + per_epoch, STEPS)) for g in groups_by_step[s]]
        assert len(seen) == len(set(seen)), "a group was trained twice within an epoch"
        if epoch_start + per_epoch <= STEPS:
            assert len(seen) == per_epoch * batch_groups, "a group was skipped"


def _train_worker_pids() -> list[int]:
    out = subprocess.run(["pgrep", "-f", "RayTrainWorker"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_killed_worker_restores_from_checkpoint_and_finishes(tiny_copy):
    proc = _start_train(tiny_copy, "train.max_failures=3")
    _wait_for_checkpoint(tiny_copy, proc)
    pids = _train_worker_pids()
    assert pids, "no Ray Train worker process found"
    os.kill(pids[-1], signal.SIGKILL)
    output = _finish(proc)
    assert "[train] restored step" in output, output[-5000:]
    report = json.loads((tiny_copy / "train" / "report.json").read_text())
    assert report["optimizer_steps"] == STEPS
    _check_each_epoch_once(_trained_groups(tiny_copy), batch_groups=4)


def test_elastic_training_continues_on_one_worker_after_a_node_is_removed(tiny_copy):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    worker_node = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        proc = _start_train(
            tiny_copy, f"ray.address={cluster.address}", "train.num_workers=[1, 2]", "train.max_failures=3"
        )
        df = _wait_for_checkpoint(tiny_copy, proc)
        assert (df["world_size"] == 2).all()
        cluster.remove_node(worker_node)
        output = _finish(proc)
    finally:
        cluster.shutdown()
    assert "[train] restored step" in output, output[-5000:]
    assert (
        "(saved by 2 workers, now 1; Adam moments: gathered)" in output
    )  # tests/test_checkpointing.py: equal within 1e-6
    metrics = pd.read_csv(tiny_copy / "train" / "metrics.csv").drop_duplicates("step", keep="last")
    assert metrics["step"].max() == STEPS
    assert set(metrics["world_size"]) == {1, 2} and metrics.iloc[-1]["world_size"] == 1
    report = json.loads((tiny_copy / "train" / "report.json").read_text())
    assert report["optimizer_steps"] == STEPS
    _check_each_epoch_once(_trained_groups(tiny_copy), batch_groups=4)


def test_rerun_with_other_workers_or_cadence_continues_and_new_math_restarts_naming_the_keys(tiny_copy):
    out = tiny_copy
    first = _finish(_start_train(out, "train.steps=6", "train.checkpoint_every=3"))
    assert "restored" not in first
    attempts = {json.loads(line)["attempt"] for line in (out / "train" / "data_rank0.jsonl").read_text().splitlines()}
    # other workers, log and checkpoint cadence: the same run, restored at its last checkpoint (nothing left to train)
    again = _finish(
        _start_train(out, "train.steps=6", "train.num_workers=1", "train.log_every=2", "train.checkpoint_every=2")
    )
    assert (
        "[train] restored step 6 (saved by 2 workers, now 1; Adam moments: gathered)" in again
        and "starting from step 0" not in again
    )
    assert {
        json.loads(line)["attempt"] for line in (out / "train" / "data_rank0.jsonl").read_text().splitlines()
    } == attempts
    # a new learning rate changes the math: a new run from step 0, and the job says which key differs
    other = _finish(_start_train(out, "train.steps=6", "train.lr=5e-4"))
    assert "train.lr 0.001 -> 0.0005" in other and "starting from step 0" in other and "restored" not in other


# bf16 training on the tiny run's fp32 shards: a live reference, in the trainer's precision (one precision throughout)
@pytest.mark.parametrize(
    "precision",
    [["train.deepspeed.dtype=bf16", "train.reference=live"], ["train.deepspeed.zero_stage=3"]],
    ids=["bf16", "zero3"],
)
def test_bf16_and_zero3_save_restore_and_export_the_full_model(tiny_copy, precision):
    import torch
    from transformers import AutoModelForCausalLM

    out = tiny_copy
    first = _finish(_start_train(out, "train.steps=4", "train.checkpoint_every=2", *precision))
    assert "restored" not in first
    again = _finish(_start_train(out, "train.steps=4", "train.checkpoint_every=2", "train.num_workers=1", *precision))
    assert "[train] restored step 4 (saved by 2 workers, now 1; Adam moments: gathered)" in again
    report = json.loads((out / "train" / "report.json").read_text())
    assert report["optimizer_steps"] == 4 and pd.notna(report["final_train_loss"])
    policy = dict(AutoModelForCausalLM.from_pretrained(out / "train" / "policy").named_parameters())
    reference = dict(AutoModelForCausalLM.from_pretrained(out / "sft" / "model").named_parameters())
    assert policy.keys() == reference.keys()
    assert all(policy[k].shape == reference[k].shape for k in policy)  # ZeRO-3: gathered, not this rank's partition
    assert any(not torch.allclose(policy[k].float(), reference[k].float()) for k in policy)  # and trained
