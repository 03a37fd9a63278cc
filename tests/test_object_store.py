"""output_dir in an object store: a real S3 server (SeaweedFS, tests/s3_server.py) holds the shards, the manifest,
checkpoints, reports and logs; a store that cannot be used fails before any work, naming the URI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from configs.base import ConfigError
from configs.runtime import StorageConfig
from configs.schema import load_config
from pipeline import storage
from pipeline.shards import Manifest, read_shards, verified_shard_files
from tests.conftest import ROOT
from tests.s3_server import READER, REGION, WRITER
from training.group_reader import GroupReader


def _rows(groups: int, per_group: int = 3) -> pd.DataFrame:
    n = groups * per_group
    return pd.DataFrame(
        {
            "id": [f"r{i}" for i in range(n)],
            "prompt": [f"p{i}" for i in range(n)],
            "responses": [["x", "y"]] * n,
            "origins": [["chosen", "rejected"]] * n,
            "scores": [[1.0, 0.0]] * n,
            "source": "s",
            "row": list(range(n)),
            "group_id": [i // per_group for i in range(n)],
            "group_position": [i % per_group for i in range(n)],
            "group_size": per_group,
            "group_similarity": [[1.0] * per_group] * n,
            "prompt_ids": [[1, 2, 3]] * n,
            "response_ids": [[[4, 5], [6]]] * n,
            "ref_logps": [[-1.0, -2.0]] * n,
        }
    )


def _store(s3_server, uri: str) -> storage.Store:
    return storage.at(
        uri,
        StorageConfig(
            endpoint_url=s3_server.endpoint, region=REGION, access_key_id=WRITER[0], secret_access_key=WRITER[1]
        ),
    )


def test_the_manifest_and_shards_in_a_bucket_are_verified_by_sha256_and_read_by_row_group(s3_server, tmp_path):
    s3_server.create_bucket("unit")
    shards = _store(s3_server, "s3://unit/manifest-test/shards")
    manifest, notes = Manifest.open(shards, "h1")
    assert not notes and not manifest.shards
    manifest.total_shards = 2
    frames = [_rows(30) for _ in range(2)]
    frames = [f.assign(group_id=f["group_id"] + 100 * k, id=f["id"] + f"-{k}") for k, f in enumerate(frames)]
    for k, frame in enumerate(frames):
        manifest.add(k, frame, {})
    assert {i.split("/")[-1] for i in shards.files()} == {"manifest.json", "shard-0.parquet", "shard-1.parquet"}
    reopened, notes = Manifest.open(shards, "h1")
    assert reopened.complete and not notes
    assert read_shards(shards).num_rows == 180

    # the trainer's reader on the bucket gives what it gives on disk, reading 64-row row groups, not whole shards
    local = tmp_path / "shards"
    on_disk, _ = Manifest.open(local, "h1")
    on_disk.total_shards = 2
    for k, frame in enumerate(frames):
        on_disk.add(k, frame, {})
    remote, disk = GroupReader(verified_shard_files(shards)), GroupReader(verified_shard_files(local))
    wanted = [105, 3, 129, 0]
    assert remote.read(wanted) == disk.read(wanted)
    assert all(parquet.num_row_groups == 2 for parquet in remote._parquet)  # 90 rows per shard
    assert len(remote._cache) == 3  # groups 105 and 129 (shard 1, both row groups), 0 and 3 (shard 0, the first)

    # a shard changed in the bucket fails its checksum: recomputed, not trained on
    (shards / "shard-1.parquet").write_bytes(b"not the shard the manifest lists")
    again, notes = Manifest.open(shards, "h1")
    assert list(again.shards) == ["shard-0.parquet"] and "shard-1.parquet: missing or checksum mismatch" in notes[0]
    with pytest.raises(ValueError, match="shard-1.parquet: missing or checksum does not match"):
        verified_shard_files(shards)


def test_a_uri_scheme_the_project_cannot_store_to_is_refused_by_name():
    for uri in ("ftp://host/runs", "hdfs://namenode/runs", "s3://"):
        with pytest.raises(ConfigError, match="output_dir") as err:
            load_config(ROOT / "configs/tiny.yaml", [f"output_dir={uri}"])
        assert uri in str(err.value)
    with pytest.raises(ConfigError, match="ray.storage_path.*'ftp'"):
        load_config(ROOT / "configs/tiny.yaml", ["ray.storage_path=ftp://host/ray"])


def test_credentials_from_the_config_never_appear_in_its_dump():
    cfg = load_config(
        ROOT / "configs/tiny.yaml",
        ["output_dir=s3://bucket/run", f"storage.access_key_id={WRITER[0]}", f"storage.secret_access_key={WRITER[1]}"],
    )
    dumped = json.dumps(cfg.model_dump(mode="json"))
    assert WRITER[1] not in dumped and WRITER[0] not in dumped
    assert cfg.storage.secret_access_key.get_secret_value() == WRITER[1]
    with pytest.raises(ConfigError, match="together"):
        load_config(ROOT / "configs/tiny.yaml", [f"storage.access_key_id={WRITER[0]}"])


def _prepare(s3_server, uri: str, tmp_path, keys) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | s3_server.env(keys)
    sets = [a for o in (f"output_dir={uri}", f"storage.staging_dir={tmp_path / 'staged'}") for a in ("--set", o)]
    return subprocess.run(
        [sys.executable, "-m", "jobs.prepare", "--config", "configs/tiny.yaml", *sets],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("case", ["no such bucket", "no credentials", "read-only prefix"])
def test_a_store_that_cannot_be_written_fails_before_any_work_naming_the_uri(s3_server, tmp_path, case):
    s3_server.create_bucket("readonly")
    uri, keys, message = {
        "no such bucket": ("s3://no-such-bucket/run", WRITER, "the bucket 'no-such-bucket' does not exist"),
        "no credentials": ("s3://readonly/run", None, "access denied and no credentials found"),
        "read-only prefix": ("s3://readonly/run", READER, "these credentials may not write here"),
    }[case]
    proc = _prepare(s3_server, uri, tmp_path, keys)
    assert proc.returncode == 1
    assert f"{uri}: {message}" in proc.stderr, proc.stderr[-3000:]
    # before any work: no Ray cluster, no model, no file of the job but its log
    staged = tmp_path / "staged" / "prepare"
    assert sorted(p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file()) == ["logs/prepare.log"]
    assert "Started a local Ray instance" not in (staged / "logs" / "prepare.log").read_text()
    assert WRITER[1] not in proc.stdout + proc.stderr and READER[1] not in proc.stdout + proc.stderr


# --- end to end on the bucket (slow): prepare killed and resumed, training killed and restored, evaluation ------------

CHEAP = ["prepare.max_rows=48", "prepare.negatives.autoregressive=0", "prepare.shard_groups=1", "prepare.batch_size=8"]
STEPS = 24


def _job(job: str, overrides: list[str], env: dict, wait: bool = True):
    sets = [a for o in overrides for a in ("--set", o)]
    proc = subprocess.Popen(
        [sys.executable, "-m", f"jobs.{job}", "--config", "configs/tiny.yaml", *sets],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    if not wait:
        return proc
    output, _ = proc.communicate(timeout=1500)
    assert proc.returncode == 0, f"{job} failed:\n{output[-6000:]}"
    return output


def _wait(proc: subprocess.Popen, ready, what: str, timeout: float = 900):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the job ended before {what}:\n{proc.stdout.read()[-5000:]}")
        found = ready()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"no {what} within {timeout}s")


def _kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray cluster it started
    proc.wait()


def _committed(manifest: storage.Store) -> dict:
    try:
        return json.loads(manifest.read_text())["shards"]
    except (OSError, json.JSONDecodeError, KeyError):
        return {}


def _registered_checkpoint(ray_dir: storage.Store) -> bool:
    for name in ray_dir.files():
        if name.endswith("checkpoint_manager_snapshot.json"):
            try:
                if json.loads((ray_dir / name).read_text()).get("checkpoint_results"):
                    return True
            except (OSError, json.JSONDecodeError):
                pass
    return False


@pytest.mark.slow
def test_prepare_train_and_evaluate_on_s3_survive_a_killed_prepare_and_a_killed_training(
    s3_server, tiny_model_dir, tmp_path
):
    s3_server.create_bucket("runs")
    uri, staging = "s3://runs/tiny-e2e", tmp_path / "staged"
    run = _store(s3_server, uri)
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("AWS_")
    } | s3_server.env()  # keys from the environment
    settings = [f"output_dir={uri}", f"storage.staging_dir={staging}", f"model.policy_dir={tiny_model_dir}", *CHEAP]

    # the same prepare on disk, uninterrupted: what the bucket must end up holding
    _job("prepare", [f"output_dir={tmp_path / 'local'}", f"model.policy_dir={tiny_model_dir}", *CHEAP], env)
    expected = {
        name: (tmp_path / "local/prepare/shards" / name).read_bytes()
        for name in json.loads((tmp_path / "local/prepare/shards/manifest.json").read_text())["shards"]
    }
    assert len(expected) == 24

    # prepare on the bucket, its driver killed after the first committed shard
    manifest = run / "prepare" / "shards" / "manifest.json"
    proc = _job("prepare", settings, env, wait=False)
    _wait(proc, lambda: _committed(manifest), "a committed shard")
    _kill(proc)
    committed = _committed(manifest)
    assert 0 < len(committed) < 24, f"the kill came too late to test anything ({len(committed)} shards committed)"
    shutil.rmtree(staging)  # resumed from another machine: nothing local survives
    output = _job("prepare", settings, env)
    assert (
        f"{len(committed)} shards written earlier match the manifest's SHA-256 in {uri}/prepare/shards: kept" in output
    )
    report = json.loads((run / "prepare" / "report.json").read_text())
    assert report["shards_dir"] == f"{uri}/prepare/shards" and report["rows_out"] == 48
    entries = json.loads(manifest.read_text())["shards"]
    assert set(entries) == set(expected)
    for name, entry in entries.items():  # every entry is a file in the bucket, with the recorded SHA-256
        assert (run / "prepare" / "shards" / name).sha256() == entry["sha256"]
    shards = {name: (run / "prepare" / "shards" / name).read_table().to_pylist() for name in entries}
    assert shards == {name: pq.read_table(pa.BufferReader(data)).to_pylist() for name, data in expected.items()}
    ids = [row["id"] for rows in shards.values() for row in rows]
    assert len(ids) == len(set(ids)) == 48  # no row lost or doubled
    assert not (run / "prepare" / "work").files()  # the work files are deleted once every shard is committed

    # training, its driver killed after the first checkpoint reached the bucket, restored from it on a bare machine
    training = [*settings, f"train.steps={STEPS}", "train.checkpoint_every=4", "train.log_every=1"]
    proc = _job("train", training, env, wait=False)
    _wait(proc, lambda: _registered_checkpoint(run / "ray"), "a checkpoint in the bucket")
    _kill(proc)
    shutil.rmtree(staging)
    output = _job("train", training, env)
    assert "[train] restored step" in output, output[-5000:]
    trained = json.loads((run / "train" / "report.json").read_text())
    assert trained["optimizer_steps"] == STEPS and trained["checkpoint"].startswith("runs/tiny-e2e/ray/")
    metrics = pd.read_csv(pa.BufferReader((run / "train" / "metrics.csv").read_bytes()))
    assert list(metrics.drop_duplicates("step", keep="last")["step"]) == list(range(1, STEPS + 1))
    assert {"model.safetensors", "config.json"} <= {n.split("/")[-1] for n in (run / "train" / "policy").files()}

    # evaluation on a bare machine, with the keys in the config instead: the policy comes from the bucket
    shutil.rmtree(staging)
    keyless = {k: v for k, v in env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    _job(
        "evaluate",
        [
            *settings,
            f"storage.endpoint_url={s3_server.endpoint}",
            f"storage.region={REGION}",
            f"storage.access_key_id={WRITER[0]}",
            f"storage.secret_access_key={WRITER[1]}",
        ],
        keyless,
    )
    evaluated = json.loads((run / "evaluate" / "report.json").read_text())
    assert evaluated["reference_implicit_accuracy"] == 0.5
    held = run.files()
    for name in (
        "evaluate/before_after.png",
        "evaluate/reward_margins.png",
        "evaluate/training_curves.png",
        "evaluate/logs/evaluate.log",
        "train/logs/train.log",
        "prepare/logs/prepare.log",
        "train/tensorboard",
    ):
        assert any(path.startswith(name) for path in held), name
    # the secret key is in no report, log or other file, in the bucket or on disk
    for path in held:
        assert WRITER[1].encode() not in (run / path).read_bytes(), path
    for path in staging.rglob("*"):
        assert not path.is_file() or WRITER[1].encode() not in path.read_bytes(), path
