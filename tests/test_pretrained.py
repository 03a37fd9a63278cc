"""GGUF files become save_pretrained directories that compute what transformers' own GGUF load computes."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from configs.base import ConfigError
from configs.schema import load_config
from tests.conftest import ROOT
from training.pretrained import EMBEDDED_SHA256, GGUFSource, convert_gguf, gguf_source


def _summed_response_logps(model, ids: list[int], prompt_len: int) -> float:
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1].float()
    logps = torch.log_softmax(logits, -1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    return float(logps[prompt_len - 1 :].sum())


def test_converted_smollm2_computes_what_transformers_gguf_load_computes(smollm2_dir):
    source = gguf_source("smollm2-135m-instruct")
    direct = AutoModelForCausalLM.from_pretrained(
        source.path.parent, gguf_file=source.path.name, dtype=torch.float32
    ).eval()
    converted = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 17 plus 25?\nReply with the number only."}],
        add_generation_prompt=True,
        tokenize=False,
    )
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    for response in ("42", "17 + 25 = 42."):
        ids = prompt_ids + tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        assert _summed_response_logps(converted, ids, len(prompt_ids)) == pytest.approx(
            _summed_response_logps(direct, ids, len(prompt_ids)), abs=1e-5
        )
    # the tokenizer, its chat template and end of turn came along
    assert tokenizer.eos_token == "<|im_end|>" and "<|im_start|>assistant" in prompt
    record = json.loads((smollm2_dir / "gguf_source.json").read_text())
    assert record["sha256"] == EMBEDDED_SHA256["smollm2-135m-instruct"] and record["architecture"] == "LlamaForCausalLM"
    assert 134e6 < record["parameters"] < 135e6


def test_a_converted_directory_is_reused_and_a_wrong_checksum_refused_before_loading(smollm2_dir, tmp_path):
    source = gguf_source("smollm2-135m-instruct")
    again = convert_gguf(source, smollm2_dir)
    assert again["converted_now"] is False
    with pytest.raises(ValueError, match="SHA-256 b179c952.* is not the expected 0000"):
        convert_gguf(GGUFSource(source.path, "test", "0" * 64), tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_a_gguf_path_that_is_not_a_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.gguf_file: .*missing.gguf is not a file"):
        gguf_source(str(tmp_path / "missing.gguf"))


def test_gguf_file_and_policy_dir_together_are_refused(tmp_path):
    cfg = tmp_path / "c.yaml"
    shutil.copy(ROOT / "configs" / "demo.yaml", cfg)
    with pytest.raises(ConfigError, match="model.policy_dir or model.gguf_file, not both"):
        load_config(cfg, ["model.policy_dir=/somewhere"])
    assert load_config(cfg).gguf_model_dir().name == "smollm2-135m-instruct"  # the demo names the packaged model
