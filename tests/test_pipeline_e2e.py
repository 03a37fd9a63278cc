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
from tests.conftest import run_job

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
MARGIN = 0.08  # held-out implicit-reward accuracy gained by training (measured +0.114: see the train test)


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


TRAIN = ["train.loss=swepo", "train.steps=24", "train.lr=3e-3", "train.checkpoint_every=12"]


def test_training_learns_what_the_rewards_say(run_dir, prepare_report):
    """Seeded: SWEPO moves held-out implicit-reward accuracy (pairs ordered by the task's reward, on groups never
    trained on) from 0.5 to 0.614; with the loss's sign flipped it falls to 0.333 and this fails (checked once)."""
    report = run_job("train", run_dir, *TRAIN)
    assert report["loss"] == "swepo" and report["optimizer_steps"] == 24
    assert report["heldout_accuracy_start"] == pytest.approx(0.5)  # the policy starts as the reference
    assert report["heldout_accuracy_end"] >= report["heldout_accuracy_start"] + MARGIN
    assert (run_dir / "train" / "policy" / "config.json").is_file()
    lines = (run_dir / "train" / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("step,loss,accuracy") and len(lines) == 25
    assert list((run_dir / "train" / "tensorboard").glob("events.out.tfevents.*"))


def test_evaluate_scores_reference_and_policy_and_draws_the_plots(run_dir, prepare_report):
    if not (run_dir / "train" / "policy" / "config.json").is_file():
        run_job("train", run_dir, *TRAIN)
    report = run_job("evaluate", run_dir)
    assert {f"{who}_{m}" for who in ("reference", "policy") for m in ("exact_match", "mean_reward", "slip_rate")} <= set(report)
    assert report["policy_implicit_accuracy"] >= report["reference_implicit_accuracy"] + MARGIN  # the trained policy
    assert report["heldout_prompts"] == 32 and set(report["exact_match_by_family"]) == {"add", "sort", "copy", "upper", "max", "count"}
    # A policy equal to its reference would score exactly 0.5; the reference itself does.
    assert report["reference_implicit_accuracy"] == pytest.approx(0.5)
    for path in report["figures"].values():
        assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((run_dir / "evaluate" / "report.json").read_text())["policy_exact_match"] == report["policy_exact_match"]


def test_evaluation_scores_a_live_reference_when_the_shards_hold_none(tiny_copy):
    """Shards without reference log-probs (prepare.ref_logps: false, train.reference: live) used to crash
    jobs.evaluate (``policy - None``); the reference model now scores the held-out groups itself."""
    from configs.schema import load_config
    from pipeline.shards import Manifest
    from tests.conftest import ROOT
    from training.evaluation import heldout_margins

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
