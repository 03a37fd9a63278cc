"""LoRA adapters: only they train, and the merged export equals the adapted model."""

from __future__ import annotations

import torch

from configs.train import LoraConfig
from models.architectures import forward_plan
from models.logprobs import packed_logps
from models.packing import pack_shared_prompts
from tests.zoo import build_model, save_own_model, tokenizer_like
from training.lora import export_merged, with_lora


def test_only_adapters_train_and_the_merged_export_scores_like_the_adapted_model(tmp_path):
    base_dir = save_own_model(tmp_path / "base", "qwen2", "chatml")
    tok = tokenizer_like("chatml")
    model = with_lora(
        build_model("qwen2", len(tok), tokenizer=tok), LoraConfig(rank=4, target_modules=["q_proj", "v_proj"])
    )
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():  # move the adapters away from their zero start so the merge has something to carry
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    model.save_pretrained(tmp_path / "adapter")
    assert not (tmp_path / "adapter" / "model.safetensors").exists()  # the adapters alone
    export_merged(base_dir, tmp_path / "adapter", tmp_path / "merged")

    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    model.eval()
    packed = pack_shared_prompts([[5, 6, 7]], [[[8, 9, 2], [10, 2]]], 0, 16, forward_plan(merged).share_prompts)
    with torch.no_grad():
        adapted, exported = packed_logps(model, packed), packed_logps(merged, packed)
        base = packed_logps(AutoModelForCausalLM.from_pretrained(base_dir).eval(), packed)
    torch.testing.assert_close(exported, adapted, atol=1e-4, rtol=0)
    assert (exported - base).abs().max() > 1e-3  # the adapters changed the model
