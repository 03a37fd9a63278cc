"""The real pipeline on a local Ray cluster with a tiny model: SFT (Ray Train + DeepSpeed), prepare
(Ray Data + vLLM + sentence-transformers), train (Ray Train + DeepSpeed). CI runs this module."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from transformers import LlamaForCausalLM

from pipeline.shards import read_shards
from tests.conftest import run_job, run_job_console

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
MARGIN = 0.08  # held-out implicit-reward accuracy gained by training (measured +0.114: see the train test)


@pytest.fixture
def in_process_ray():
    """Ray started in this process (the evaluation's actors) is shut down after the test: later modules start their
    own."""
    import ray

    yield
    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="module")
def run_dir(tiny_run) -> Path:
    return tiny_run["dir"]


@pytest.fixture(scope="module")
def sft_report(tiny_run) -> dict:
    return tiny_run["sft"]


@pytest.fixture(scope="module")
def prepare_report(tiny_run) -> dict:
    return tiny_run["prepare"]


def test_sft_trains_and_saves_a_reusable_reference(run_dir, sft_report):
    assert sft_report["steps"] == 40 and 0.0 <= sft_report["heldout_exact_match"] <= 1.0
    assert sft_report["wall_seconds"] > 0 and not sft_report["reused"]
    again = run_job("sft", run_dir)
    assert again["reused"] and again["heldout_exact_match"] == sft_report["heldout_exact_match"]


def test_prepare_builds_every_stage_into_shards(run_dir, prepare_report):
    r = prepare_report
    assert r["rows_in"] == 48 and r["rows_out"] == 48 and not r["skipped"]
    assert set(r["negatives_by_type"]) == {"autoregressive", "meanfield", "truncation", "batch"}
    assert r["generation_tokens_per_second"] > 0
    assert all(r["seconds_per_stage"][s] > 0 for s in ("autoregressive", "meanfield", "embed_responses", "ref_logps"))
    table = read_shards(run_dir / "prepare" / "shards")
    rows = table.to_pylist()
    assert len(rows) == 48 and len(table.to_pandas()) == 48  # readable by pandas in another process
    for row in rows:
        k = len(row["responses"])
        assert len(row["origins"]) == len(row["response_ids"]) == len(row["scores"]) == len(row["ref_logps"]) == k
        assert row["origins"][0] == "ground_truth" and row["rank"][0] == 0 and sorted(row["rank"]) == list(range(k))
        assert len(row["prompt_embedding"]) == 384 and len(row["response_embeddings"]) == k
        assert len(row["group_similarity"]) == row["group_size"] == 2
        assert row["group_similarity"][row["group_position"]] == pytest.approx(1.0, abs=1e-4)
        assert sum(row["deviation"]) == pytest.approx(0.0, abs=1e-9)
    by_group = {}
    for row in rows:
        by_group.setdefault(row["group_id"], []).append(row)
    assert all(len(v) == 2 for v in by_group.values())  # shards hold whole groups


def test_stored_reference_logps_match_transformers(run_dir, prepare_report):
    model_dir = run_dir / "sft" / "model"
    model = LlamaForCausalLM.from_pretrained(model_dir).eval()
    rows = read_shards(run_dir / "prepare" / "shards").to_pylist()[:6]
    for row in rows:
        for ids, stored in zip(row["response_ids"], row["ref_logps"]):
            seq = row["prompt_ids"] + ids
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([seq])).logits[0].double(), -1)
            n = len(row["prompt_ids"])
            direct = sum(logp[n - 1 + t, tok].item() for t, tok in enumerate(ids))
            assert stored == pytest.approx(direct, abs=1e-4)


def test_prepare_resumes_and_reproduces_the_same_shards(run_dir, prepare_report):
    shards = run_dir / "prepare" / "shards"
    manifest = json.loads((shards / "manifest.json").read_text())
    before = {name: e["sha256"] for name, e in manifest["shards"].items()}
    assert len(before) >= 2
    # A run stopped after its first shard: the later shards and their manifest entries are missing.
    for name in sorted(before)[1:]:
        (shards / name).unlink()
        del manifest["shards"][name]
    (shards / "manifest.json").write_text(json.dumps(manifest))
    resumed = run_job("prepare", run_dir)
    after = json.loads((shards / "manifest.json").read_text())
    assert {name: e["sha256"] for name, e in after["shards"].items()} == before
    assert resumed["rows_out"] == prepare_report["rows_out"]
    assert pq.read_table(shards / sorted(before)[0]).num_rows > 0


TRAIN = [
    "train.loss=swepo",
    "train.steps=24",
    "train.lr=3e-3",
    "train.checkpoint_every=12",
    "tracking.report_to=[tensorboard,mlflow,wandb]",
]


def test_training_learns_what_the_rewards_say(run_dir, prepare_report):
    """Seeded: SWEPO moves held-out implicit-reward accuracy (pairs ordered by the task's reward, on groups never
    trained on) from 0.5 to 0.614; with the loss's sign flipped it falls to 0.333 and this fails (checked once)."""
    report, console = run_job_console("train", run_dir, *TRAIN)
    assert report["loss"] == "swepo" and report["optimizer_steps"] == 24
    assert report["heldout_accuracy_start"] == pytest.approx(0.5)  # the policy starts as the reference
    assert report["heldout_accuracy_end"] >= report["heldout_accuracy_start"] + MARGIN
    assert (run_dir / "train" / "policy" / "config.json").is_file()
    lines = (run_dir / "train" / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("step,loss,accuracy") and len(lines) == 25
    # The console: the start line, progress lines (step 1, every tenth, the end), the report; library chatter: the log.
    shown = console.splitlines()
    assert shown[0].startswith("[train] tiny: swepo on the toy model: 24 steps") and len(shown) <= 25, console
    assert [line for line in shown if "24/24 steps" in line and line.startswith("[train] [####")], console
    assert all(line.startswith("[train] ") for line in shown), console
    log = (run_dir / "train" / "logs" / "train.log").read_text()
    assert "RayTrainWorker" in log and "train: step 20 loss" in log


def _wandb_records(path: Path) -> list:
    """The records of an offline W&B run file (LevelDB log blocks of protobuf records, after a 7-byte header)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, pending, records = path.read_bytes(), 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_trackers_hold_the_heldout_accuracy_tensorboard_mlflow_and_wandb(run_dir, prepare_report):
    if not (run_dir / "train" / "policy" / "config.json").is_file():
        run_job("train", run_dir, *TRAIN)
    end = json.loads((run_dir / "train" / "report.json").read_text())["heldout_accuracy_end"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "train" / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("heldout/accuracy")][-1] == (24, pytest.approx(end, abs=1e-6))
    assert len(events.Scalars("train/loss")) == 24

    import os

    from mlflow.tracking import MlflowClient

    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    client = MlflowClient((run_dir / "mlruns").resolve().as_uri())
    run_id = (run_dir / "train" / "mlflow_run_id").read_text()
    history = client.get_metric_history(run_id, "heldout/accuracy")
    assert [m.step for m in history] == [0, 12, 24] and history[-1].value == pytest.approx(end, abs=1e-6)
    assert client.get_run(run_id).info.status == "FINISHED"

    (run_file,) = (run_dir / "train" / "wandb").glob("offline-run-*/run-*.wandb")
    rows = [
        {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
        for r in _wandb_records(run_file)
        if r.WhichOneof("record_type") == "history"
    ]
    held = [(row["_step"], row["heldout/accuracy"]) for row in rows if "heldout/accuracy" in row]
    assert held[-1] == (24, pytest.approx(end, abs=1e-6)) and len([r for r in rows if "train/loss" in r]) == 24


def test_evaluate_scores_reference_and_policy_and_draws_the_plots(run_dir, prepare_report):
    if not (run_dir / "train" / "policy" / "config.json").is_file():
        run_job("train", run_dir, *TRAIN)
    report = run_job("evaluate", run_dir)
    assert {
        f"{who}_{m}" for who in ("reference", "policy") for m in ("exact_match", "mean_reward", "slip_rate")
    } <= set(report)
    assert report["policy_implicit_accuracy"] >= report["reference_implicit_accuracy"] + MARGIN  # the trained policy
    assert report["heldout_prompts"] == 32 and set(report["exact_match_by_family"]) == {
        "add",
        "sort",
        "copy",
        "upper",
        "max",
        "count",
    }
    # A policy equal to its reference would score exactly 0.5; the reference itself does.
    assert report["reference_implicit_accuracy"] == pytest.approx(0.5)
    for path in report["figures"].values():
        assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (
        json.loads((run_dir / "evaluate" / "report.json").read_text())["policy_exact_match"]
        == report["policy_exact_match"]
    )


def test_evaluation_loads_no_model_in_the_driver(run_dir, monkeypatch, in_process_ray):
    """Held-out scoring, greedy answers and rewards run in Ray actors: the driver of an 8B evaluation must not hold
    two 32 GB models. Loading any model in this process fails the test; the actors are other processes."""
    from transformers import PreTrainedModel

    from configs.schema import load_config
    from jobs.common import init_ray
    from orchestration.evaluate import run_evaluate
    from tests.conftest import ROOT

    if not (run_dir / "train" / "policy" / "config.json").is_file():
        run_job("train", run_dir, *TRAIN)

    def refuse(*args, **kwargs):
        raise AssertionError(f"a model was loaded in the driver: {args[:2]}")

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(refuse))
    cfg = load_config(ROOT / "configs/tiny.yaml", [f"output_dir={run_dir}"])
    init_ray(cfg)
    report = run_evaluate(cfg, job="evaluate_no_driver_model")
    assert report["reference_implicit_accuracy"] == 0.5 and report["policy_implicit_accuracy"] > 0.5
    assert report["driver_peak_rss_mb"] <= report["driver_rss_mb_before"] + 200


def test_evaluation_scores_a_live_reference_when_the_shards_hold_none(tiny_copy, in_process_ray):
    """Shards without reference log-probs (prepare.ref_logps: false, train.reference: live) used to crash
    jobs.evaluate (``policy - None``); the reference model now scores the held-out groups itself."""
    from configs.schema import load_config
    from orchestration.evaluate import heldout_margins
    from pipeline.shards import Manifest
    from tests.conftest import ROOT

    cfg = load_config(ROOT / "configs/tiny.yaml", [f"output_dir={tiny_copy}", "train.reference=live"])
    shards = tiny_copy / "prepare" / "shards"
    with_ref = heldout_margins(cfg.policy_dir(), cfg)
    manifest, _ = Manifest.open(shards, json.loads((shards / "manifest.json").read_text())["config_hash"])
    for name, entry in list(manifest.shards.items()):
        rows = pq.read_table(shards / name).to_pandas()
        rows["ref_logps"] = [None] * len(rows)
        manifest.add(name.removeprefix("shard-").removesuffix(".parquet"), rows, entry["stats"])
    assert read_shards(shards)["ref_logps"].null_count == read_shards(shards).num_rows
    accuracy, margins = heldout_margins(cfg.policy_dir(), cfg)
    assert accuracy == pytest.approx(0.5) and accuracy == with_ref[0]  # the reference against itself
    assert all(abs(m) < 1e-5 for values in margins.values() for m in values)


def test_preference_accuracy_on_test_rows_is_the_implicit_accuracy_and_half_for_the_reference(run_dir, in_process_ray):
    """The studies' held-out preference accuracy (actors.heldout.HeldoutScores.preference_accuracy, here on every
    group of the tiny shards): with summed rewards it is the evaluation's implicit accuracy on the same groups; the
    reference against itself scores exactly 0.5, in both the plain and the length-controlled accuracy."""
    import ray

    from actors.heldout import HeldoutScores
    from configs.schema import load_config
    from orchestration.evaluate import preference_scores_on_test_rows
    from pipeline.shards import shard_group_ids, verified_shard_files
    from tests.conftest import ROOT

    if not (run_dir / "train" / "policy" / "config.json").is_file():
        run_job("train", run_dir, *TRAIN)
    cfg = load_config(ROOT / "configs/tiny.yaml", [f"output_dir={run_dir}"])
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    policy = run_dir / "train" / "policy"
    reference = preference_scores_on_test_rows(cfg.policy_dir(), cfg, cfg)
    trained = preference_scores_on_test_rows(policy, cfg, cfg)
    assert reference["implicit_accuracy"] == 0.5 and reference["test_pairs"] == trained["test_pairs"] > 0
    assert reference["lc_accuracy"] == 0.5 or reference["test_lc_pairs"] == 0
    files = verified_shard_files(run_dir / "prepare" / "shards")
    ids = shard_group_ids(files)
    scorer = HeldoutScores(
        str(cfg.policy_dir()), str(policy), files, cfg.train.max_responses, "fp32", cfg.pack_row_tokens()
    )
    assert (run_dir / "reference_test_logps.json").is_file()  # the policy was scored against the kept reference
    live, _ = scorer.preference_accuracy(ids, cfg.train)  # ... which gives what a live reference gives
    assert trained["implicit_accuracy"] == pytest.approx(live["implicit_accuracy"], abs=1e-9)
    assert trained["implicit_accuracy"] == pytest.approx(scorer.score(ids, cfg.train.beta, 2)[0])
    assert trained["implicit_accuracy"] > 0.5  # the tiny run learns what its rewards say
    mean, _ = scorer.preference_accuracy(ids, cfg.train.model_copy(update={"reward_normalization": "mean"}))
    assert mean["test_pairs"] == trained["test_pairs"] and 0 <= mean["implicit_accuracy"] <= 1


def test_self_samples_of_a_users_source_with_no_scorer_are_refused_before_the_front_pass(tiny_copy):
    """keep_ground_truth: false on a user's ground-truth source with reward: auto (no scorer for the samples) was
    refused only after the front pass had read, tokenized and embedded every row; now before it."""
    source = tiny_copy / "truths.jsonl"
    source.write_text("".join(json.dumps({"prompt": f"q{i}", "response": f"a{i}"}) + "\n" for i in range(8)))
    sets = [
        f"data.source={source}",
        "prepare.reward=auto",
        "prepare.negatives={autoregressive: 2, meanfield: 0, truncation: 0, batch: 0, keep_ground_truth: false}",
    ]
    fronts = sorted(tiny_copy.glob("prepare/work/front/front-*"))
    with pytest.raises(AssertionError, match="prepare.reward=auto has no scorer for them") as refused:
        run_job("prepare", tiny_copy, *sets)
    assert str(source) in str(refused.value)
    assert sorted(tiny_copy.glob("prepare/work/front/front-*")) == fronts  # no front pass for the refused source
