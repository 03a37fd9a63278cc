"""Architecture conformance: for every model of the zoo (tests/zoo.py), eager and sdpa attention, the response
log-probs of the trainer and the reference scorer, and the next-token distributions meanfield draws from, equal the
model's own forward on each ``prompt + response`` alone within 1e-4 (fp32); or the model is refused by name.

``python -m tests.test_conformance`` prints the table (README, "Align your own model").
"""

from __future__ import annotations

import pytest

from models.architectures import UnsupportedModel, forward_plan
from tests.conformance import REFUSED, TOKENIZER, VOCAB, measure
from tests.zoo import ARCHITECTURES, build_model

TOLERANCE = 1e-4
BACKENDS = ("eager", "sdpa")


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
    lines = [
        "| architecture | attention | trainer | reference scorer | meanfield | how |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name in ARCHITECTURES:
        for backend in BACKENDS:
            if name in REFUSED:
                lines.append(f"| {name} | {backend} | refused: {REFUSED[name]} | | | |")
                continue
            r = measure(name, backend)
            lines.append(
                f"| {name} | {backend} | {r['trainer']:.1e} | {r['reference']:.1e} | {r['meanfield']:.1e} | "
                f"{r['plan']} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    print(conformance_table())
