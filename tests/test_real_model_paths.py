"""Every path a user takes with their own model, on the real one: SmolLM2-135M-Instruct (converted from its packaged
GGUF file) as ``model.policy_dir``, with UltraFeedback pairs, conversational pairs and AlpacaEval best-of-16 scored
groups. A few rows and steps each: the point is a real tokenizer, chat template and end of turn on every path."""

from __future__ import annotations

import json

import pytest

from pipeline.shards import read_shards
from tests.conftest import SHARED_DATA, run_job
from tests.zoo import write_task_as_chat

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not present")]
FEW = [
    "train.steps=2",
    "train.checkpoint_every=2",
    "train.batch_groups=2",
    "train.micro_groups=1",
    "train.heldout_fraction=0.25",
]


def _implicit_accuracies(out) -> tuple[float, float]:
    report = json.loads((out / "evaluate" / "report.json").read_text())
    return report["reference_heldout_implicit_accuracy"], report["heldout_implicit_accuracy"]


def test_ultrafeedback_pairs_train_dpo_with_lora_on_smollm2(smollm2_dir, tmp_path):
    run_job(
        "run",
        tmp_path,
        f"model.policy_dir={smollm2_dir}",
        "prepare.max_rows=16",
        "prepare.shard_groups=4",
        *FEW,
        config="configs/own_ultrafeedback.yaml",
    )
    rows = read_shards(tmp_path / "prepare" / "shards").to_pylist()
    # paired rows carry plain-text prompts: tokenized as written (only conversational sources meet the template),
    # kept to max_length with the response as TRL's DPO truncates
    assert rows and not any(r["prompt"].startswith("<|im_start|>") for r in rows)
    assert all(len(r["prompt_ids"]) + len(ids) <= 512 for r in rows for ids in r["response_ids"])
    reference, policy = _implicit_accuracies(tmp_path)
    assert reference == pytest.approx(0.5) and 0.0 <= policy <= 1.0


def test_conversational_pairs_train_rpo_on_smollm2(smollm2_dir, tmp_path):
    source = write_task_as_chat(tmp_path / "pairs.jsonl", n_train=200, pairs=True)
    run_job(
        "run",
        tmp_path,
        f"model.policy_dir={smollm2_dir}",
        f"data.source={source}",
        "prepare.max_rows=32",
        "prepare.shard_groups=4",
        "evaluate.max_prompts=8",
        *FEW,
        config="configs/own_chat_pairs.yaml",
    )
    report = json.loads((tmp_path / "evaluate" / "report.json").read_text())
    assert report["heldout_prompts"] == 8 and 0.0 <= report["win_rate"] <= 1.0
    assert report["reference_heldout_implicit_accuracy"] == pytest.approx(0.5)


@pytest.mark.xfail(
    strict=True,
    reason="known defect (2026-12-01): each of the 2 training workers grows to 9.5-10 GB on "
    "SmolLM2 with 11 responses of up to 512 tokens, even with LoRA, and Ray's memory monitor kills them "
    "at step 2; prepare passes",
)
def test_alpacaeval_best_of_16_groups_train_swepo_on_smollm2(smollm2_dir, tmp_path):
    report = run_job(
        "prepare",
        tmp_path,
        f"model.policy_dir={smollm2_dir}",
        "prepare.max_rows=8",
        "prepare.shard_groups=2",
        "prepare.grouping.group_size=1",
        config="configs/alpacaeval_bo16.yaml",
    )
    assert report["reward"] == "source" and report["rows_out"] == 8
    rows = read_shards(tmp_path / "prepare" / "shards").to_pylist()
    assert all(len(r["responses"]) == len(r["scores"]) == len(r["ref_logps"]) == 11 for r in rows)
    train = run_job(
        "train",
        tmp_path,
        f"model.policy_dir={smollm2_dir}",
        "prepare.max_rows=8",
        "prepare.shard_groups=2",
        "prepare.grouping.group_size=1",
        "train.lora={rank: 8, alpha: 16}",
        *FEW,
        config="configs/alpacaeval_bo16.yaml",
    )
    assert train["optimizer_steps"] == 2 and train["heldout_accuracy_start"] == pytest.approx(0.5)
