"""Architecture conformance: for every model of the zoo (tests/zoo.py), eager and sdpa attention, the response
log-probs of the trainer and the reference scorer, and the next-token distributions meanfield draws from, equal the
model's own forward on each ``prompt + response`` alone within 1e-4 (fp32); or the model is refused by name.

``python -m tests.test_conformance`` prints the table (README, "Align your own model").
"""
from __future__ import annotations

import pytest
import torch

from pipeline.tokenize import pack_shared_prompts
from tests.zoo import ARCHITECTURES, build_model, tokenizer_like
from training.logprobs import UnsupportedModel, forward_plan, packed_logps, reference_logps, response_logits

TOLERANCE = 1e-4
BACKENDS = ("eager", "sdpa")
TOKENIZER = tokenizer_like("llama3")
VOCAB = len(TOKENIZER)
REFUSED = {"mamba": "recurrent layers"}


def _data():
    """Two prompts with 2 and 3 responses, every sequence longer than the zoo's 4-token sliding windows."""
    g = torch.Generator().manual_seed(0)
    ids = lambda n: torch.randint(5, VOCAB, (n,), generator=g).tolist()  # noqa: E731
    return [ids(7), ids(11)], [[ids(6), ids(9)], [ids(5), ids(12), ids(3)]]


@torch.no_grad()
def _direct(model, prompts, responses):
    """Per response: (summed log-prob, [T, V] log-softmax over its positions), each sequence forwarded alone."""
    out = []
    for p, rs in zip(prompts, responses):
        for r in rs:
            logp = model(input_ids=torch.tensor([p + r])).logits[0].double().log_softmax(-1)[len(p) - 1 : len(p) - 1 + len(r)]
            out.append((logp.gather(-1, torch.tensor(r)[:, None]).sum().item(), logp))
    return out


def measure(name: str, backend: str) -> dict[str, float]:
    """Max |packed - direct| for the trainer's and the reference scorer's log-probs and meanfield's log-softmax."""
    model = build_model(name, VOCAB, backend, tokenizer=TOKENIZER)
    plan = forward_plan(model)
    prompts, responses = _data()
    direct = _direct(model, prompts, responses)
    model.train()  # the trainer's mode: dropout is 0 in the zoo, gradients flow
    packed = pack_shared_prompts(prompts, responses, 0, 32, plan.share_prompts)
    trainer = packed_logps(model, packed, plan)
    trainer.sum().backward()  # the trainer's path is differentiable end to end
    model.eval()
    reference = reference_logps(model, prompts, responses, 0, 32, prompts_per_pass=1)
    flat_prompts = [p for p, rs in zip(prompts, responses) for _ in rs]
    meanfield = response_logits(model, flat_prompts, [r for rs in responses for r in rs], 0)
    return {
        "trainer": max(abs(a - d) for a, (d, _) in zip(trainer.tolist(), direct)),
        "reference": max(abs(a - d) for a, (d, _) in zip(reference, direct)),
        "meanfield": max((m.double().log_softmax(-1) - d).abs().max().item() for m, (_, d) in zip(meanfield, direct)),
        "plan": plan.describe(),
    }


CASES = [(n, b) for n in ARCHITECTURES for b in BACKENDS if n not in REFUSED]


@pytest.mark.parametrize(("name", "backend"), CASES)
def test_packed_equals_the_models_own_forward(name, backend):
    result = measure(name, backend)
    for part in ("trainer", "reference", "meanfield"):
        assert result[part] < TOLERANCE, f"{name}/{backend} {part}: {result[part]:.3g} ({result['plan']})"


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_recurrent_models_are_refused_by_name(name):
    model = build_model(name, VOCAB, "eager", tokenizer=TOKENIZER)
    with pytest.raises(UnsupportedModel, match=f"'{name}'.*{REFUSED[name]}"):
        forward_plan(model)


def test_unverified_architecture_and_unmaskable_backend_get_one_sequence_per_row():
    cohere = forward_plan(build_model("cohere", VOCAB, "sdpa", tokenizer=TOKENIZER))
    assert not cohere.share_prompts and not cohere.plain_head and "not verified" in cohere.note
    llama = build_model("llama", VOCAB, "sdpa", tokenizer=TOKENIZER)
    llama.config._attn_implementation = "flash_attention_2"
    flash = forward_plan(llama.config)
    assert not flash.share_prompts and "flash_attention_2" in flash.note


def test_unknown_layer_types_are_refused():
    from transformers import Qwen2Config

    config = Qwen2Config(layer_types=["full_attention", "linear_attention"], num_hidden_layers=2)
    with pytest.raises(UnsupportedModel, match="linear_attention"):
        forward_plan(config)


def conformance_table() -> str:
    lines = ["| architecture | attention | trainer | reference scorer | meanfield | how |", "| --- | --- | --- | --- | --- | --- |"]
    for name in ARCHITECTURES:
        for backend in BACKENDS:
            if name in REFUSED:
                lines.append(f"| {name} | {backend} | refused: {REFUSED[name]} | | | |")
                continue
            r = measure(name, backend)
            lines.append(f"| {name} | {backend} | {r['trainer']:.1e} | {r['reference']:.1e} | {r['meanfield']:.1e} | {r['plan']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(conformance_table())
