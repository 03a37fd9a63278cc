"""bf16 on the CPU from prepare to evaluation: one precision throughout, refused where two would meet."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.conftest import run_job

pytestmark = pytest.mark.slow
BF16 = ["model.dtype=bf16", "train.deepspeed.dtype=bf16", "train.steps=6", "train.checkpoint_every=6"]


def test_bf16_prepare_train_and_evaluate_start_from_an_exact_tie(tiny_run, tmp_path):
    shutil.copytree(tiny_run["dir"] / "sft", tmp_path / "sft")
    run_job("prepare", tmp_path, *BF16)
    manifest = json.loads((tmp_path / "prepare" / "shards" / "manifest.json").read_text())
    assert manifest["source"]["ref_logps_dtype"] == "bf16"
    train = run_job("train", tmp_path, *BF16)
    assert train["heldout_accuracy_start"] == 0.5  # the reference against itself, in bf16
    evaluate = run_job("evaluate", tmp_path, *BF16)
    assert evaluate["reference_implicit_accuracy"] == 0.5
    assert abs(evaluate["policy_implicit_accuracy"] - train["heldout_accuracy_end"]) < 0.1  # one precision, one forward


def test_training_in_bf16_on_fp32_reference_log_probs_is_refused_naming_both(tiny_copy):
    with pytest.raises(AssertionError, match=r"computed in fp32, but training computes in bf16"):
        run_job("train", tiny_copy, "train.deepspeed.dtype=bf16")
    assert not (tiny_copy / "train" / "policy").exists()
