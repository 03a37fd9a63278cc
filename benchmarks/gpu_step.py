"""The trainer's step on a GPU for benchmarks.gpu_core: random-weight models of real shapes, synthetic contrast
groups, tokens/s and peak memory of the project's packed step beside the padded baseline, and bf16 against fp32."""

from __future__ import annotations

import resource
import time

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

from configs.train import TrainConfig
from models.architectures import forward_plan
from models.logprobs import packed_logps, reference_logps, sequence_logps
from models.packing import pad_sequences
from training.batches import collate, record_reference, with_recorded_reference
from training.objective import implicit_accuracy, preference_loss

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


SHAPES = {
    "llama-3.2-1b": lambda: LlamaConfig(
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        rope_theta=500000.0,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
    ),
    "qwen2.5-1.5b": lambda: Qwen2Config(
        vocab_size=151936,
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        rope_theta=1000000.0,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
    ),
}


SMOKE_SHAPES = {
    "llama-tiny": lambda: LlamaConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=True,
    ),
    "qwen2-tiny": lambda: Qwen2Config(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=True,
    ),
}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_groups(k: int, prompts: int, prompt_len: int, max_response: int, vocab: int, seed: int) -> list[dict]:
    """One-prompt contrast groups with ``k`` scored responses of realistic, differing lengths."""
    g = torch.Generator().manual_seed(seed)
    ids = lambda n: torch.randint(10, vocab, (n,), generator=g).tolist()  # noqa: E731
    groups = []
    for i in range(prompts):
        lengths = torch.randint(max_response // 2, max_response + 1, (k,), generator=g).tolist()
        groups.append(
            {
                "group_id": i,
                "members": [
                    {
                        "prompt_ids": ids(prompt_len),
                        "response_ids": [ids(n) for n in lengths],
                        "origins": ["dataset"] * k,
                        "scores": torch.rand(k, generator=g).tolist(),
                        "ref_logps": None,
                        "rank": None,
                        "similarity": [1.0],
                    }
                ],
            }
        )
    return groups


def build(shape, device: torch.device, dtype: torch.dtype, seed: int = 0):
    torch.manual_seed(seed)
    with device:
        model = AutoModelForCausalLM.from_config(shape(), attn_implementation="sdpa", dtype=dtype)
    return model


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def timed_steps(step, device: torch.device, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        step()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return (time.perf_counter() - started) / steps


def trainer_step(model, groups: list[dict], device: torch.device, peak: float, warmup: int, steps: int) -> dict:
    """The project's step: packed shared prompts, the chunked head, SWEPO, fused AdamW; and the padded baseline."""
    plan = forward_plan(model)
    tc = TrainConfig(loss="swepo")
    row_tokens = max(
        len(m["prompt_ids"]) + sum(len(r) for r in m["response_ids"]) for g in groups for m in g["members"]
    )
    first = collate(groups, 0, row_tokens, plan.share_prompts).to(device)
    record: dict = {}  # the reference: the policy's step-0 forward, as the trainer keeps it for its held-out figures
    with torch.no_grad():
        record_reference(
            record, [g["group_id"] for g in groups], first, first.gather(packed_logps(model, first.packed, plan))
        )
    batch = collate(with_recorded_reference(groups, record), 0, row_tokens, plan.share_prompts).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=device.type == "cuda")
    params = sum(p.numel() for p in model.parameters())
    counts = batch.gather(batch.packed.response_lengths.float())

    def step():
        policy = batch.gather(packed_logps(model, batch.packed, plan))
        loss, _ = preference_loss(tc, batch, policy, batch.ref_logps, counts)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    model.train()
    reset_peak(device)
    seconds = timed_steps(step, device, warmup, steps)
    tokens = batch.packed.computed_tokens
    ours = {
        "tokens_per_step": tokens,
        "seconds_per_step": seconds,
        "tokens_per_second": tokens / seconds,
        "mfu": 6 * params * tokens / seconds / peak,
        "peak_memory_gb": peak_memory_gb(device),
    }

    members = [m for g in groups for m in g["members"]]
    padded = pad_sequences(
        [m["prompt_ids"] for m in members for _ in m["response_ids"]],
        [r for m in members for r in m["response_ids"]],
        0,
    )
    padded = {k: v.to(device) for k, v in padded.items()}

    def padded_step():
        logps = sequence_logps(model, padded["input_ids"], padded["attention_mask"], padded["response_mask"])
        policy = torch.zeros_like(batch.mask, dtype=logps.dtype)
        policy[batch.mask] = logps
        loss, _ = preference_loss(tc, batch, policy, batch.ref_logps, counts)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    reset_peak(device)
    seconds = timed_steps(padded_step, device, warmup, steps)
    baseline = {
        "padded_tokens_per_step": int(padded["input_ids"].numel()),
        "seconds_per_step": seconds,
        "tokens_per_second": tokens / seconds,
        "mfu": 6 * params * tokens / seconds / peak,
        "peak_memory_gb": peak_memory_gb(device),
    }
    return {
        "parameters": params,
        "project": ours,
        "padded": baseline,
        "speedup": baseline["seconds_per_step"] / ours["seconds_per_step"],
    }


@torch.no_grad()
def precision(shape, groups: list[dict], device: torch.device, beta: float = 0.1) -> dict:
    """bf16 against fp32 on the same weights, and the step-0 accuracy of a bf16 policy against bf16 references."""
    model = build(shape, device, torch.float32).eval()
    plan = forward_plan(model)
    row_tokens = max(
        len(m["prompt_ids"]) + sum(len(r) for r in m["response_ids"]) for g in groups for m in g["members"]
    )
    batch = collate(groups, 0, row_tokens, plan.share_prompts).to(device)
    fp32 = batch.gather(packed_logps(model, batch.packed, plan))
    model = model.to(torch.bfloat16)
    bf16 = batch.gather(packed_logps(model, batch.packed, plan))
    diff = (bf16 - fp32).abs()[batch.mask]
    # the trainer's held-out reference: its own step-0 forward, recorded and read back as the groups' ref_logps
    record: dict = {}
    record_reference(record, [g["group_id"] for g in groups], batch, bf16)
    again = collate(with_recorded_reference(groups, record), 0, row_tokens, plan.share_prompts).to(device)
    policy = again.gather(packed_logps(model, again.packed, plan))
    own = implicit_accuracy(beta * (policy - again.ref_logps), again)
    # the reference scorer's layout (one prompt per pass), in the same precision
    members = [m for g in groups for m in g["members"]]
    scored = reference_logps(
        model,
        [m["prompt_ids"] for m in members],
        [m["response_ids"] for m in members],
        0,
        row_tokens,
        prompts_per_pass=1,
    )
    ref = torch.zeros_like(policy)
    ref[batch.mask] = torch.tensor(scored, device=device, dtype=ref.dtype)
    other = implicit_accuracy(beta * (policy - ref), again)
    return {
        "bf16_vs_fp32_mean_abs": float(diff.mean()),
        "bf16_vs_fp32_max_abs": float(diff.max()),
        "step0_accuracy_own_forward": own[0] / max(own[1], 1),
        "step0_accuracy_reference_scorer_layout": other[0] / max(other[1], 1),
        "pairs": own[1],
    }
