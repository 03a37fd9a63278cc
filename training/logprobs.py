"""Summed response log-probs of causal LMs, robust to left or right padding."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["label_logps", "packed_logps", "response_token_counts", "sequence_logps", "token_logps_from_logits"]


def token_logps_from_logits(logits: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """Log-prob of each label under already-aligned logits, 0 where ``mask`` is False.

    Args:
        logits: ``[N, T, V]``; ``logits[n, t]`` is the distribution over ``labels[n, t]``
            (callers shift by one for next-token prediction).
        labels: ``[N, T]`` long; values under a False mask are ignored (may be -100).
        mask: ``[N, T]`` bool.
    Returns: ``[N, T]`` float32 (float64 if the logits are).

    Computed as ``logit[label] - logsumexp(logits)`` one sequence at a time, so
    the only ``[T, V]`` temporary is one row's upcast copy, never a full
    ``[N, T, V]`` log_softmax.
    """
    mask = mask.bool()
    labels = torch.where(mask, labels, torch.zeros_like(labels))
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    rows = []
    for row_logits, row_labels in zip(logits, labels):
        row_logits = row_logits.to(dtype)  # bf16 logsumexp loses too much precision
        picked = row_logits.gather(-1, row_labels.unsqueeze(-1)).squeeze(-1)
        rows.append(picked - row_logits.logsumexp(-1))
    token_logps = torch.stack(rows)
    # `where`, not multiplication: padded query rows can hold NaN logits with
    # some attention kernels, and NaN * 0 would leak into the sum and gradient.
    return torch.where(mask, token_logps, torch.zeros_like(token_logps))


def response_token_counts(response_mask: Tensor) -> Tensor:
    """Number of scored response tokens per sequence (``[N, L]`` -> ``[N]``), matching
    :func:`sequence_logps` (the first position has no prediction, so it never counts).
    Mean per-token NLL of a response is ``-sequence_logps(...) / response_token_counts(...)``.
    """
    return response_mask[:, 1:].bool().sum(-1)


def sequence_logps(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    response_mask: Tensor,
) -> Tensor:
    """Summed log-probs of the response tokens of each sequence, one forward pass.

    Args:
        model: a Hugging Face causal LM (returns ``.logits [N, L, V]``).
        input_ids, attention_mask: ``[N, L]``, left or right padded.
        response_mask: ``[N, L]``, True on response tokens (prompt and padding False).
    Returns: ``[N]`` float32, differentiable w.r.t. the model parameters.
    """
    attention_mask = attention_mask.long()
    # Positions count real tokens only, so left padding does not shift them. RoPE
    # (Llama) is offset-invariant only up to rounding; learned absolute position
    # embeddings (GPT-2) give wrong results without this.
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
    labels = input_ids[:, 1:]
    mask = response_mask[:, 1:].bool() & attention_mask[:, 1:].bool()
    return token_logps_from_logits(logits[:, :-1], labels, mask).sum(-1)


def _upcast(x: Tensor) -> Tensor:
    """float32 for low-precision values (a bf16 logsumexp loses too much), float64 kept."""
    return x if x.dtype == torch.float64 else x.float()


class _LabelLogps(torch.autograd.Function):
    """``log_softmax(logits)[label]`` per row of ``[M, V]`` logits.

    Autograd's version of this takes five passes over ``[M, V]`` in backward (softmax, a zero-filled
    scatter for the gather, their sum); this one takes three: ``g * (onehot - softmax)``, in place.
    With a large vocabulary these passes are a sizeable part of a training step.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, labels: Tensor) -> Tensor:
        lse = logits.logsumexp(-1)
        ctx.save_for_backward(logits, labels, lse)
        return logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - lse

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        logits, labels, lse = ctx.saved_tensors
        grad = (logits - lse.unsqueeze(-1)).exp_().mul_(-grad_out.unsqueeze(-1))
        grad.scatter_add_(-1, labels.unsqueeze(-1), grad_out.unsqueeze(-1))
        return grad, None


class _HeadLabelLogps(torch.autograd.Function):
    """``log_softmax(hidden @ weight.T)[label]`` computed ``chunk`` rows at a time, never holding the
    ``[M, V]`` logits: backward recomputes each chunk's logits (one extra matmul) instead of keeping
    them, so memory and memory traffic stay flat as the number of response tokens grows."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, labels: Tensor, chunk: int) -> Tensor:
        out, lses = [], []
        for c in range(0, hidden.shape[0], chunk):
            logits = _upcast(hidden[c : c + chunk] @ weight.T)
            lse = logits.logsumexp(-1)
            out.append(logits.gather(-1, labels[c : c + chunk, None]).squeeze(-1) - lse)
            lses.append(lse)
        ctx.save_for_backward(hidden, weight, labels, torch.cat(lses))
        ctx.chunk = chunk
        return torch.cat(out)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        hidden, weight, labels, lse = ctx.saved_tensors
        grad_hidden, grad_weight = torch.empty_like(hidden), torch.zeros_like(weight)
        for c in range(0, hidden.shape[0], ctx.chunk):
            h, g = hidden[c : c + ctx.chunk], grad_out[c : c + ctx.chunk]
            grad = _upcast(h @ weight.T).sub_(lse[c : c + ctx.chunk, None]).exp_().mul_(-g[:, None])
            grad.scatter_add_(-1, labels[c : c + ctx.chunk, None], g[:, None])
            grad = grad.to(hidden.dtype)
            grad_hidden[c : c + ctx.chunk] = grad @ weight
            grad_weight += grad.T @ h
        return grad_hidden, grad_weight, None, None


HEAD_CHUNK = 1024  # response tokens per chunk of the vocabulary projection


def label_logps(logits: Tensor, labels: Tensor) -> Tensor:
    """``[M, V]`` logits, ``[M]`` labels -> ``[M]`` log-probs of the labels (float32, or float64 if the logits are)."""
    return _LabelLogps.apply(_upcast(logits), labels)


def _plain_head(model: nn.Module) -> bool:
    """Whether the logits are just ``hidden @ lm_head.weight.T``: no bias, soft-capping or scaling, and the
    weight not partitioned away by ZeRO-3 (whose hooks only gather it for a module call)."""
    config, head = model.config, model.get_output_embeddings()
    return (isinstance(head, nn.Linear) and head.bias is None and not hasattr(head.weight, "ds_id")
            and getattr(config, "final_logit_softcapping", None) is None and getattr(config, "logit_scale", None) is None)


def packed_logps(model: nn.Module, packed) -> Tensor:
    """Summed log-probs of each response of a :class:`pipeline.tokenize.Packed` batch, one forward pass.

    Logits are computed only where a response token is predicted (not over prompts or padding), which
    matters when the vocabulary projection is a large part of the model.

    Returns: ``[N]`` float32 (float64 for a float64 model), equal to :func:`sequence_logps` on each
    ``prompt + response`` alone; differentiable w.r.t. the model parameters.
    """
    lm = getattr(model, "module", model)  # a DeepSpeed engine wraps the model; ZeRO hooks sit on the submodules
    dtype = next(lm.parameters()).dtype
    # An additive mask works with every attention implementation (eager adds it, sdpa takes it as is).
    mask = torch.zeros(packed.attention_mask.shape, dtype=dtype).masked_fill(~packed.attention_mask, torch.finfo(dtype).min)
    inputs = {"input_ids": packed.input_ids, "attention_mask": mask, "position_ids": packed.position_ids}
    if _plain_head(lm):
        hidden = lm.get_decoder()(**inputs).last_hidden_state[packed.rows, packed.positions]
        token_logps = _HeadLabelLogps.apply(hidden, lm.get_output_embeddings().weight, packed.labels, HEAD_CHUNK)
    else:
        token_logps = label_logps(model(**inputs).logits[packed.rows, packed.positions], packed.labels)
    return torch.zeros(len(packed.response_lengths), dtype=token_logps.dtype).index_add(0, packed.sequences, token_logps)
