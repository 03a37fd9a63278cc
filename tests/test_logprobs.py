"""Sequence log-probs: neither padding side nor packing responses after a shared prompt may change the result."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from models.logprobs import label_logps, packed_logps, response_token_counts, sequence_logps, token_logps_from_logits
from models.packing import pack_shared_prompts, pad_sequences

transformers = pytest.importorskip("transformers")

PAD = 0
# (prompt, response) token ids of different lengths; ids avoid PAD.
EXAMPLES = [
    ([5, 6, 7], [8, 9, 10, 11]),
    ([12, 13], [14]),
    ([15, 16, 17, 18, 19], [20, 21]),
    ([22], [23, 24, 25, 26, 27, 28]),
]


@pytest.fixture(scope="module", params=["llama-eager", "llama-sdpa", "gpt2-eager"])
def model(request: pytest.FixtureRequest) -> torch.nn.Module:
    arch, attn = request.param.split("-")
    torch.manual_seed(0)
    if arch == "llama":
        config = transformers.LlamaConfig(
            vocab_size=50,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=64,
            pad_token_id=PAD,
        )
        config._attn_implementation = attn
        return transformers.LlamaForCausalLM(config).eval()
    # Learned absolute positions: only correct under left padding if
    # sequence_logps passes position_ids (RoPE would hide that bug).
    config = transformers.GPT2Config(
        vocab_size=50, n_embd=64, n_layer=2, n_head=2, n_positions=64, pad_token_id=PAD, bos_token_id=1, eos_token_id=1
    )
    config._attn_implementation = attn
    return transformers.GPT2LMHeadModel(config).eval()


def _one_at_a_time(model: torch.nn.Module) -> Tensor:
    """Reference: each sequence alone, no padding, full log_softmax."""
    out = []
    for prompt, response in EXAMPLES:
        ids = torch.tensor([prompt + response])
        with torch.no_grad():
            logp = model(input_ids=ids).logits[0, :-1].log_softmax(-1)
        token_logp = logp.gather(-1, ids[0, 1:, None]).squeeze(-1)
        out.append(token_logp[len(prompt) - 1 :].sum())
    return torch.stack(out)


def _batch(side: str) -> tuple[Tensor, Tensor, Tensor]:
    width = max(len(p) + len(r) for p, r in EXAMPLES) + 1  # one extra pad on every row
    ids, attn, resp = (torch.zeros(len(EXAMPLES), width, dtype=torch.long) for _ in range(3))
    for i, (prompt, response) in enumerate(EXAMPLES):
        n = len(prompt) + len(response)
        cols = slice(0, n) if side == "right" else slice(width - n, width)
        ids[i, cols] = torch.tensor(prompt + response)
        attn[i, cols] = 1
        resp[i, cols] = torch.tensor([0] * len(prompt) + [1] * len(response))
    ids[attn == 0] = PAD
    return ids, attn, resp


@pytest.mark.parametrize("side", ["left", "right"])
def test_batched_matches_one_at_a_time(model: torch.nn.Module, side: str) -> None:
    ids, attn, resp = _batch(side)
    with torch.no_grad():
        batched = sequence_logps(model, ids, attn, resp)
    assert batched.shape == (len(EXAMPLES),)
    torch.testing.assert_close(batched, _one_at_a_time(model), atol=1e-5, rtol=0)
    counts = response_token_counts(resp)
    assert counts.tolist() == [len(r) for _, r in EXAMPLES]


@pytest.mark.parametrize("side", ["left", "right"])
def test_gradients_are_finite(model: torch.nn.Module, side: str) -> None:
    ids, attn, resp = _batch(side)
    model.zero_grad()
    sequence_logps(model, ids, attn, resp).sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    model.zero_grad()


def test_token_logps_from_logits_matches_log_softmax() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 11, (3, 5), generator=g)
    mask = torch.rand(3, 5, generator=g) > 0.3
    labels_ignored = labels.masked_fill(~mask, -100)  # ignore-index labels under the mask are fine
    expected = logits.log_softmax(-1).gather(-1, labels[..., None]).squeeze(-1) * mask
    torch.testing.assert_close(token_logps_from_logits(logits, labels_ignored, mask), expected)


def test_token_logps_nan_logits_under_mask_do_not_leak() -> None:
    logits = torch.randn(1, 3, 7, dtype=torch.float64, requires_grad=True)
    poisoned = torch.cat([torch.full_like(logits[:, :1], float("nan")), logits[:, 1:]], 1)
    mask = torch.tensor([[False, True, True]])
    out = token_logps_from_logits(poisoned, torch.tensor([[1, 2, 3]]), mask).sum()
    (grad,) = torch.autograd.grad(out, logits)
    assert torch.isfinite(out) and torch.isfinite(grad[:, 1:]).all()


def test_bf16_logits_are_upcast() -> None:
    logits = torch.randn(2, 4, 9).to(torch.bfloat16)
    out = token_logps_from_logits(logits, torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 4, dtype=torch.bool))
    assert out.dtype == torch.float32
    expected = logits.float().log_softmax(-1)[..., 0]
    torch.testing.assert_close(out, expected)


# prompts with several responses (each ending in its own last token), for the packed layout
SHARED = [
    ([5, 6, 7], [[8, 9, 10, 11], [20, 21]]),
    ([12, 13], [[14], [23, 24, 25], [8, 9]]),
    ([22], [[23, 24, 25, 26, 27, 28]]),
]


def _padded_logps(model: torch.nn.Module) -> Tensor:
    pairs = [(p, r) for p, rs in SHARED for r in rs]
    t = pad_sequences([p for p, _ in pairs], [r for _, r in pairs], PAD)
    return sequence_logps(model, t["input_ids"], t["attention_mask"], t["response_mask"])


@pytest.mark.parametrize("row_tokens", [6, 10, 64])  # 6 splits a prompt's responses over blocks; 64 is one row
def test_packed_shared_prompts_match_each_sequence_alone(model: torch.nn.Module, row_tokens: int) -> None:
    packed = pack_shared_prompts([p for p, _ in SHARED], [rs for _, rs in SHARED], PAD, row_tokens)
    assert packed.response_lengths.tolist() == [len(r) for _, rs in SHARED for r in rs]
    assert packed.tokens == sum(len(p) + len(r) for p, rs in SHARED for r in rs)
    with torch.no_grad():
        torch.testing.assert_close(packed_logps(model, packed), _padded_logps(model), atol=1e-5, rtol=0)


def test_packed_gradients_equal_the_padded_ones(model: torch.nn.Module) -> None:
    m = model.to(torch.float64)
    packed = pack_shared_prompts([p for p, _ in SHARED], [rs for _, rs in SHARED], PAD, 10)
    weights = torch.linspace(-1, 1, len(packed.response_lengths), dtype=torch.float64)
    params = [q for q in m.parameters() if q.requires_grad]
    g_packed = torch.autograd.grad((packed_logps(m, packed) * weights).sum(), params, allow_unused=True)
    g_padded = torch.autograd.grad((_padded_logps(m) * weights).sum(), params, allow_unused=True)
    for a, b in zip(g_packed, g_padded):
        if a is not None or b is not None:
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)  # Llama rotary tables are float32
    model.to(torch.float32)


def test_label_logps_match_log_softmax_and_pass_gradcheck() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 13, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 13, (6,), generator=g)
    expected = logits.log_softmax(-1).gather(-1, labels[:, None]).squeeze(-1)
    torch.testing.assert_close(label_logps(logits, labels), expected)
    assert torch.autograd.gradcheck(lambda x: label_logps(x, labels), (logits,))
    assert label_logps(logits.detach().to(torch.bfloat16), labels).dtype == torch.float32


def test_chunked_head_logps_equal_the_full_projection_and_pass_gradcheck() -> None:
    from models.logprobs import _HeadLabelLogps

    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(11, 5, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 11, (7,), generator=g)
    expected = (hidden @ weight.T).log_softmax(-1).gather(-1, labels[:, None]).squeeze(-1)
    torch.testing.assert_close(_HeadLabelLogps.apply(hidden, weight, labels, 3), expected)  # chunks of 3, 3, 1
    assert torch.autograd.gradcheck(lambda h, w: _HeadLabelLogps.apply(h, w, labels, 3), (hidden, weight))


def test_chunked_head_backward_sums_chunks_in_fp32_and_skips_a_frozen_head() -> None:
    from torch.utils._python_dispatch import TorchDispatchMode

    from models.logprobs import _HeadLabelLogps

    torch.manual_seed(0)
    hidden64, weight64 = torch.randn(512, 32, dtype=torch.float64), torch.randn(64, 32, dtype=torch.float64) * 0.1
    labels, grad_out = torch.randint(0, 64, (512,)), torch.randn(512, dtype=torch.float64)
    w = weight64.bfloat16().double().requires_grad_()  # the exact gradient at the bf16 inputs
    _HeadLabelLogps.apply(hidden64.bfloat16().double(), w, labels, 512).backward(grad_out.float().double())
    exact = w.grad
    hidden, weight = hidden64.bfloat16(), weight64.bfloat16().requires_grad_()
    _HeadLabelLogps.apply(hidden, weight, labels, 1).backward(grad_out.float())  # 512 chunks of one token
    assert weight.grad.dtype == torch.bfloat16
    error = (weight.grad.double() - exact).abs().max() / exact.abs().max()
    # one bf16 rounding of each chunk's product and of the result (0.004 here), not one per chunk of the running
    # sum (0.03 here, growing with the number of chunks)
    assert error < 0.01, f"relative error {error:.4f}"

    class CountMatmuls(TorchDispatchMode):
        calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            CountMatmuls.calls += func.__name__.startswith("mm")
            return func(*args, **(kwargs or {}))

    for trains_head, expected in ((True, 3), (False, 2)):  # per chunk: logits again, grad_hidden, grad_weight
        h = hidden64.float().requires_grad_()
        wt = weight64.float().requires_grad_(trains_head)
        out = _HeadLabelLogps.apply(h, wt, labels, 128)
        CountMatmuls.calls = 0
        with CountMatmuls():
            out.backward(grad_out.float())
        assert CountMatmuls.calls == expected * 4
