"""Your own model end to end, as `make own-model-demo` runs it: a tiny random-weight Mistral with a ChatML template
and no pad token, a conversational source, LoRA, and evaluation under a programmatic reward. CI runs this module."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipeline.shards import read_shards
from tests.conftest import run_job
from tests.zoo import save_own_model, write_task_as_chat

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def test_run_on_a_users_chat_model_with_lora_reports_win_rate(tmp_path):
    base = save_own_model(tmp_path / "base_model")
    source = write_task_as_chat(tmp_path / "task_chat.jsonl", n_train=400)
    run = run_job(
        "run",
        tmp_path,
        f"model.policy_dir={base}",
        f"data.source={source}",
        "prepare.max_rows=48",
        "prepare.shard_groups=4",
        "train.steps=4",
        "train.checkpoint_every=2",
        "train.heldout_fraction=0.25",
        "evaluate.max_prompts=8",
        config="configs/own_model.yaml",
    )
    assert not (tmp_path / "sft").exists()  # the toy SFT never ran
    report = json.loads((tmp_path / "evaluate" / "report.json").read_text())
    assert 0.0 <= report["win_rate"] <= 1.0 and report["heldout_prompts"] == 8
    assert report["reference_heldout_implicit_accuracy"] == pytest.approx(0.5)
    assert report["heldout_implicit_accuracy"] != pytest.approx(0.5)  # the adapters moved the policy
    assert "exact_match_by_family" not in report  # embedded-task metrics only for the embedded task
    assert run["win_rate"] == report["win_rate"]
    # the ids every stage reads (vLLM's prompt_token_ids, meanfield, the reference scorer, the trainer): the template's
    tokenizer = AutoTokenizer.from_pretrained(base)
    row = read_shards(tmp_path / "prepare" / "shards").slice(0, 1).to_pylist()[0]
    first = {json.loads(line)["id"]: json.loads(line) for line in source.read_text().splitlines()}[row["id"]]
    expected = tokenizer.apply_chat_template(first["messages"][:1], add_generation_prompt=True, tokenize=True)
    assert row["prompt_ids"] == list(expected["input_ids"] if hasattr(expected, "keys") else expected)
    samples = json.loads((tmp_path / "evaluate" / "samples.json").read_text())
    assert samples[0]["prompt"].startswith("<|im_start|>user\n")  # rendered by the model's chat template
    # the adapters are kept beside a merged save_pretrained policy that transformers (and vLLM, above) load
    train = tmp_path / "train"
    assert (train / "adapter" / "adapter_config.json").is_file() and not (
        train / "adapter" / "model.safetensors"
    ).exists()
    merged = AutoModelForCausalLM.from_pretrained(train / "policy")
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert AutoTokenizer.from_pretrained(train / "policy").pad_token is None  # the vocabulary was never changed
