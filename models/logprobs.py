"""Summed response log-probs of causal LMs, exact for every architecture the project accepts.

:func:`forward_plan` decides per model how responses are laid out (each prompt shared by its responses under
block masks, or one sequence per row under the model's own masks) and whether the chunked ``lm_head`` may stand
in for the model's head; it refuses what neither computes exactly. ``tests/test_conformance.py`` holds the proof.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from models.architectures import ForwardPlan, UnsupportedModel, check_architecture, forward_plan
from models.packing import pack_shared_prompts, pad_sequences

__all__ = [
    "ForwardPlan",
    "UnsupportedModel",
    "check_architecture",
    "forward_plan",
    "label_logps",
    "packed_logps",
    "reference_logps",
    "response_logits",
    "response_token_counts",
    "sequence_logps",
    "token_logps_from_logits",
]


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
    device = next(model.parameters()).device
    input_ids, attention_mask, response_mask = (
        input_ids.to(device),
        attention_mask.to(device).long(),
        response_mask.to(device),
    )
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
        # A frozen head (LoRA) needs no weight gradient: skipping it saves a third of the head's backward. Where it
        # is needed, the chunks' sum runs in fp32, so a bf16 head does not round the running sum at every chunk.
        grad_weight = (
            torch.zeros(weight.shape, dtype=_upcast(weight).dtype, device=weight.device)
            if ctx.needs_input_grad[1]
            else None
        )
        grad_hidden = torch.empty_like(hidden)
        for c in range(0, hidden.shape[0], ctx.chunk):
            h, g = hidden[c : c + ctx.chunk], grad_out[c : c + ctx.chunk]
            grad = _upcast(h @ weight.T).sub_(lse[c : c + ctx.chunk, None]).exp_().mul_(-g[:, None])
            grad.scatter_add_(-1, labels[c : c + ctx.chunk, None], g[:, None])
            grad = grad.to(hidden.dtype)
            grad_hidden[c : c + ctx.chunk] = grad @ weight
            if grad_weight is not None:
                grad_weight += grad.T @ h
        return grad_hidden, None if grad_weight is None else grad_weight.to(weight.dtype), None, None


HEAD_CHUNK = 1024  # response tokens per chunk of the vocabulary projection


def label_logps(logits: Tensor, labels: Tensor) -> Tensor:
    """``[M, V]`` logits, ``[M]`` labels -> ``[M]`` log-probs of the labels (float32, or float64 if the logits are)."""
    return _LabelLogps.apply(_upcast(logits), labels)


def block_attention_masks(packed, windows: dict[str, int | None], dtype: torch.dtype):
    """The additive 4-D masks of a shared-prompt :class:`Packed` batch: one tensor when every layer has the same
    window, else a mapping from layer type to its mask (what models with mixed layers take)."""
    masks = {}
    for layer_type, window in windows.items():
        allowed = packed.attention_mask
        if window is not None:
            # Sliding window as the model defines it on one sequence: key position > query position - window.
            distance = packed.position_ids[:, None, :, None] - packed.position_ids[:, None, None, :]
            eye = torch.eye(allowed.shape[-1], dtype=torch.bool, device=allowed.device)
            allowed = (allowed & (distance < window)) | eye
        masks[layer_type] = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
            ~allowed, torch.finfo(dtype).min
        )
    return next(iter(masks.values())) if len(masks) == 1 else masks


def packed_logps(model: nn.Module, packed, plan: ForwardPlan | None = None) -> Tensor:
    """Summed log-probs of each response of a :class:`pipeline.tokenize.Packed` batch, one forward pass.

    Logits are computed only where a response token is predicted (not over prompts or padding), which
    matters when the vocabulary projection is a large part of the model.

    Returns: ``[N]`` float32 (float64 for a float64 model), equal to :func:`sequence_logps` on each
    ``prompt + response`` alone; differentiable w.r.t. the model parameters.
    """
    lm = getattr(model, "module", model)  # a DeepSpeed engine wraps the model; ZeRO hooks sit on the submodules
    plan = plan or forward_plan(lm)
    if packed.shared != plan.share_prompts:
        raise ValueError(f"{plan.describe()}: the batch was packed with share_prompts={packed.shared}")
    weight = next(lm.parameters())
    dtype, packed = weight.dtype, packed.to(weight.device)
    if packed.shared:
        mask = block_attention_masks(packed, plan.layer_windows, dtype)
    else:
        mask = packed.attention_mask.long()
    inputs = {"input_ids": packed.input_ids, "attention_mask": mask, "position_ids": packed.position_ids}
    if plan.plain_head:
        hidden = lm.get_decoder()(**inputs).last_hidden_state[packed.rows, packed.positions]
        token_logps = _HeadLabelLogps.apply(hidden, lm.get_output_embeddings().weight, packed.labels, HEAD_CHUNK)
    else:
        token_logps = label_logps(model(**inputs).logits[packed.rows, packed.positions], packed.labels)
    return torch.zeros(len(packed.response_lengths), dtype=token_logps.dtype, device=token_logps.device).index_add(
        0, packed.sequences, token_logps
    )


@torch.no_grad()
def reference_logps(
    model: nn.Module,
    prompts: list[list[int]],
    responses: list[list[list[int]]],
    pad_id: int,
    row_tokens: int,
    prompts_per_pass: int = 16,
) -> list[float]:
    """Summed log-probs of ``responses[p][k]`` after ``prompts[p]`` (prompt-major order), as the trainer computes
    the policy's: the same plan, packing and head, ``prompts_per_pass`` prompts per forward pass."""
    plan = forward_plan(model)
    values: list[float] = []
    for c in range(0, len(prompts), prompts_per_pass):
        packed = pack_shared_prompts(
            prompts[c : c + prompts_per_pass],
            responses[c : c + prompts_per_pass],
            pad_id,
            row_tokens,
            plan.share_prompts,
        )
        values += packed_logps(model, packed, plan).tolist()
    return values


@torch.no_grad()
def response_logits(
    model: nn.Module, prompts: list[list[int]], responses: list[list[int]], pad_id: int
) -> list[Tensor]:
    """Teacher-forced next-token logits over each response, from the model's own forward on right-padded
    ``prompt + response`` rows (its own causal and sliding masks): ``[T_n, V]`` per response, row ``t``
    predicting ``responses[n][t]``."""
    t = pad_sequences(prompts, responses, pad_id)
    device = next(model.parameters()).device
    logits = model(input_ids=t["input_ids"].to(device), attention_mask=t["attention_mask"].to(device)).logits
    return [row[len(p) - 1 : len(p) - 1 + len(r)] for p, r, row in zip(prompts, responses, logits)]
