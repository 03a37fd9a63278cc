"""The prepare job survives its driver being killed, keeps its shards when only speed settings change, and writes
shards from every node of a cluster that training then reads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from configs.schema import load_config
from orchestration.records_hash import records_hash
from tests.conftest import ROOT, run_job

pytestmark = [pytest.mark.slow]

# Cheap stages only (no vLLM), 24 shards of one group each.
CHEAP = ["prepare.max_rows=48", "prepare.negatives.autoregressive=0", "prepare.shard_groups=1", "prepare.batch_size=8"]


def _cheap(tiny_model_dir: Path) -> list[str]:
    return [f"model.policy_dir={tiny_model_dir}", *CHEAP]


def _shards(out: Path) -> dict[str, list[dict]]:
    shards = out / "prepare" / "shards"
    manifest = json.loads((shards / "manifest.json").read_text())
    return {name: pq.read_table(shards / name).to_pylist() for name in manifest["shards"]}


def test_speed_settings_keep_the_records_hash_and_record_settings_change_it(tiny_model_dir):
    base = load_config(ROOT / "configs/tiny.yaml", [f"model.policy_dir={tiny_model_dir}"])
    key = records_hash(base, str(tiny_model_dir))
    for speed in (
        "prepare.model_actors=3",
        "prepare.generator_actors=2",
        "prepare.batch_size=4",
        "prepare.model_actor_cpus=2",
    ):
        cfg = load_config(ROOT / "configs/tiny.yaml", [f"model.policy_dir={tiny_model_dir}", speed])
        assert records_hash(cfg, str(tiny_model_dir)) == key, speed
    for record in ("prepare.negatives.truncation=3", "prepare.grouping.group_size=3", "seed=1", "model.max_length=64"):
        cfg = load_config(ROOT / "configs/tiny.yaml", [f"model.policy_dir={tiny_model_dir}", record])
        assert records_hash(cfg, str(tiny_model_dir)) != key, record


def test_a_killed_driver_resumes_with_no_row_lost_or_doubled_and_more_actors_keep_finished_shards(
    tiny_model_dir, tmp_path
):
    whole = tmp_path / "whole"
    run_job("prepare", whole, *_cheap(tiny_model_dir))
    expected = _shards(whole)
    assert len(expected) == 24

    killed = tmp_path / "killed"
    manifest = killed / "prepare" / "shards" / "manifest.json"
    sets = [arg for o in (f"output_dir={killed}", *_cheap(tiny_model_dir)) for arg in ("--set", o)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobs.prepare", "--config", "configs/tiny.yaml", *sets],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    committed: dict = {}
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        try:
            committed = json.loads(manifest.read_text())["shards"]
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            committed = {}
        if committed:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray cluster it started
    proc.wait()
    committed = json.loads(manifest.read_text())["shards"]
    assert 0 < len(committed) < 24, f"the kill came too late to test anything ({len(committed)} shards committed)"
    files = {name: os.stat(manifest.parent / name).st_mtime_ns for name in committed}

    report = run_job("prepare", killed, *_cheap(tiny_model_dir), "prepare.model_actors=2")
    assert {name: os.stat(manifest.parent / name).st_mtime_ns for name in committed} == files  # kept, not rewritten
    resumed = _shards(killed)
    assert resumed == expected  # same shards, each with the same rows in the same order
    ids = [row["id"] for rows in resumed.values() for row in rows]
    assert len(ids) == len(set(ids)) == report["rows_out"] == 48


def test_two_node_cluster_writes_shards_on_both_nodes_and_training_reads_them(tiny_model_dir, tmp_path):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    try:
        on_cluster = [
            f"ray.address={cluster.address}",
            "train.num_workers=2",
            "train.steps=2",
            "train.checkpoint_every=2",
            "train.batch_groups=2",
            "train.micro_groups=1",
        ]
        prepared = run_job("prepare", tmp_path, *_cheap(tiny_model_dir), *on_cluster)
        nodes = {
            entry["node"]
            for entry in json.loads((tmp_path / "prepare/shards/manifest.json").read_text())["shards"].values()
        }
        assert len(nodes) == 2 and set(prepared["shard_writers"]) == nodes
        trained = run_job("train", tmp_path, *_cheap(tiny_model_dir), *on_cluster)
        assert trained["optimizer_steps"] == 2
    finally:
        cluster.shutdown()
