"""Preference losses on summed sequence log-probs (pure tensor functions).

Every loss takes summed response log-probs under the policy (``policy_*``) and
under the frozen reference (``ref_*``) and returns a :class:`LossOutput`:

* ``losses``  -- per-example loss, shape ``[B]`` (the trainer reduces it),
* ``valid``   -- ``[B]`` bool; ``False`` rows have loss exactly 0 and zero
  gradient, and should be excluded from the mean and counted as skipped,
* ``metrics`` -- detached per-example diagnostics (rewards, margins, accuracy).

Notation follows DESIGN.md "Losses": ``r = logp - ref`` and ``s = beta * r``.
K-response losses accept ``mask [B, K]`` (True = real response) so groups of
different K can be padded into one tensor; padded entries contribute nothing
and receive an exactly-zero gradient, whatever values they hold.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "LossOutput",
    "cosine_similarity_matrix",
    "cpo_loss",
    "dpo_loss",
    "hinge_loss",
    "infonca_loss",
    "ipo_loss",
    "nca_loss",
    "nca_pair_loss",
    "robust_dpo_loss",
    "rpo_loss",
    "swepo_deviations",
    "swepo_log_weights",
    "swepo_loss",
]


class LossOutput(NamedTuple):
    losses: Tensor
    valid: Tensor
    metrics: dict[str, Tensor]


# ---------------------------------------------------------------- helpers


def _rewards(policy: Tensor, ref: Tensor, beta: float, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """``s = beta * (policy - ref)`` with padded entries replaced by 0, plus a full mask.

    Zeroing (via ``where``, not multiplication) keeps NaN/inf padding out of the
    graph, so padded entries get an exactly-zero gradient.
    """
    if mask is None:
        mask = torch.ones_like(policy, dtype=torch.bool)
    s = torch.where(mask, beta * (policy - ref), torch.zeros_like(policy))
    return s, mask


def _masked_logsumexp(x: Tensor, mask: Tensor) -> Tensor:
    """logsumexp over the last dim restricted to ``mask``; every row needs one True."""
    return x.masked_fill(~mask, float("-inf")).logsumexp(dim=-1)


def _masked_log_softmax(x: Tensor, mask: Tensor) -> Tensor:
    """log_softmax over ``mask`` entries; masked entries are 0 (not -inf) so ``q * logp`` stays finite."""
    return torch.where(mask, x - _masked_logsumexp(x, mask).unsqueeze(-1), torch.zeros_like(x))


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask, x, torch.zeros_like(x)).sum(-1) / mask.sum(-1).clamp(min=1)


# ---------------------------------------------------------------- DPO


def dpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float = 0.1,
) -> LossOutput:
    """DPO: ``-log sigmoid(beta * (r_w - r_l))``.

    Args:
        policy_chosen, policy_rejected, ref_chosen, ref_rejected: ``[B]`` summed log-probs.
    Metrics: ``reward_chosen``, ``reward_rejected``, ``margin``, ``accuracy`` (all ``[B]``).
    """
    chosen = beta * (policy_chosen - ref_chosen)
    rejected = beta * (policy_rejected - ref_rejected)
    losses = -F.logsigmoid(chosen - rejected)
    metrics = _pair_metrics(chosen, rejected)
    return LossOutput(losses, torch.ones_like(losses, dtype=torch.bool), metrics)


# The pairwise variants TRL's DPOTrainer offers (``loss_type``), on the same arguments as :func:`dpo_loss`
# (``[B]`` summed log-probs) with ``h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)``.


def ipo_loss(
    policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor, beta: float = 0.1
) -> LossOutput:
    """IPO (Azar et al. 2023, eq. 17; TRL ``ipo``): ``(h - 1 / (2 beta))^2``, beta the regulariser tau. TRL and the
    IPO authors' results take per-token log-prob averages (``train.reward_normalization: mean``)."""
    h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return LossOutput(
        (h - 1 / (2 * beta)) ** 2,
        torch.ones_like(h, dtype=torch.bool),
        _pair_metrics(beta * (policy_chosen - ref_chosen), beta * (policy_rejected - ref_rejected)),
    )


def hinge_loss(
    policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor, beta: float = 0.1
) -> LossOutput:
    """SLiC's hinge (TRL ``hinge``): ``relu(1 - beta h)``."""
    chosen, rejected = beta * (policy_chosen - ref_chosen), beta * (policy_rejected - ref_rejected)
    return LossOutput(
        F.relu(1 - (chosen - rejected)), torch.ones_like(chosen, dtype=torch.bool), _pair_metrics(chosen, rejected)
    )


def robust_dpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.1,
) -> LossOutput:
    """Robust DPO (Chowdhury et al. 2024; TRL ``robust``), unbiased under labels flipped with probability eps:
    ``(-(1 - eps) log sigma(beta h) + eps log sigma(-beta h)) / (1 - 2 eps)``, ``0 <= eps < 0.5``."""
    chosen, rejected = beta * (policy_chosen - ref_chosen), beta * (policy_rejected - ref_rejected)
    z, eps = chosen - rejected, label_smoothing
    losses = (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)
    return LossOutput(losses, torch.ones_like(z, dtype=torch.bool), _pair_metrics(chosen, rejected))


def nca_pair_loss(
    policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor, beta: float = 0.1
) -> LossOutput:
    """NCA on a pair (TRL ``nca_pair``): ``-log sigma(s_w) - log sigma(-s_w) / 2 - log sigma(-s_l) / 2``."""
    chosen, rejected = beta * (policy_chosen - ref_chosen), beta * (policy_rejected - ref_rejected)
    losses = -F.logsigmoid(chosen) - 0.5 * F.logsigmoid(-chosen) - 0.5 * F.logsigmoid(-rejected)
    return LossOutput(losses, torch.ones_like(chosen, dtype=torch.bool), _pair_metrics(chosen, rejected))


def _pair_metrics(chosen: Tensor, rejected: Tensor) -> dict[str, Tensor]:
    chosen, rejected = chosen.detach(), rejected.detach()
    return {
        "reward_chosen": chosen,
        "reward_rejected": rejected,
        "margin": chosen - rejected,
        "accuracy": (chosen > rejected).to(chosen.dtype),
    }


# ---------------------------------------------------------------- SWEPO


def swepo_deviations(scores: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """SWEPO's score deviations ``Δ_i = S_i - mean(S)`` over each group's real responses (float64, 0 where padded)
    and its positives ``Δ_i > tol``: ``scores``, ``mask`` ``[B, K]``. The relative tolerance makes equal scores give
    no positive (the mean of equal float32 scores can round slightly above them)."""
    scores = torch.where(mask, scores, torch.zeros_like(scores)).to(torch.float64)
    dev = torch.where(mask, scores - _masked_mean(scores, mask).unsqueeze(-1), torch.zeros_like(scores))
    tol = 1e-6 * scores.abs().amax(-1, keepdim=True).clamp(min=1.0)
    return dev, mask & (dev > tol)


def swepo_log_weights(
    dev: Tensor, alpha: float = 1.0, p: float = 1.0, weighting: Literal["abs", "signed"] = "abs"
) -> Tensor:
    """SWEPO's log-weights of deviations ``dev`` (any shape): ``α|Δ|^p`` ("abs") or ``αΔ`` ("signed")."""
    if weighting == "abs":
        return alpha * dev.abs().pow(p)
    if weighting == "signed":
        return alpha * dev
    raise ValueError(f"unknown SWEPO weighting {weighting!r}")


def swepo_loss(
    policy_logps: Tensor,
    ref_logps: Tensor,
    scores: Tensor,
    mask: Tensor | None = None,
    beta: float = 0.1,
    alpha: float = 1.0,
    p: float = 1.0,
    weighting: Literal["abs", "signed"] = "abs",
    mode: Literal["k1_vs_k2", "1_vs_k"] = "k1_vs_k2",
) -> LossOutput:
    """SWEPO: softmax of positives against the whole group, tilted by score deviations.

    ``Δ_i = S_i - mean(S)``; positives ``P = {Δ_i > 0}`` (``"1_vs_k"``: only the
    top-scored response, first index on ties); ``log w_i = α|Δ_i|^p`` ("abs") or
    ``α Δ_i`` ("signed"); ``z_i = s_i + log w_i``;
    ``L = -(logsumexp_P z - logsumexp_all z)``. ``p = 0`` is the unweighted loss.
    In "1_vs_k" the weights still enter ``z`` for every response.

    Args:
        policy_logps, ref_logps, scores: ``[B, K]``.
        mask: ``[B, K]`` bool, True for real responses (None = all real).
    Returns ``valid [B]``: False for groups with no positive (all scores equal,
    or fewer than one real response); their loss is 0 with zero gradient.
    Metrics: ``reward_positive``, ``reward_negative`` (mean s over P / not P),
    ``margin``, ``num_positive``.
    """
    s, mask = _rewards(policy_logps, ref_logps, beta, mask)
    dev, positive = swepo_deviations(scores, mask)
    dev = dev.to(s.dtype)
    valid = positive.any(-1)
    if mode == "1_vs_k":
        top = dev.masked_fill(~mask, float("-inf")).argmax(-1, keepdim=True)
        positive = torch.zeros_like(mask).scatter(-1, top, True) & valid.unsqueeze(-1)
    elif mode != "k1_vs_k2":
        raise ValueError(f"unknown SWEPO mode {mode!r}")
    z = s + swepo_log_weights(dev, alpha, p, weighting)
    # Invalid groups get all-True sets so logsumexp never sees an empty set
    # (which would make the backward NaN); their loss is replaced by 0 below.
    skip = ~valid.unsqueeze(-1)
    losses = _masked_logsumexp(z, mask | skip) - _masked_logsumexp(z, positive | skip)
    losses = torch.where(valid, losses, torch.zeros_like(losses))
    negative = mask & ~positive
    s_d = s.detach()
    metrics = {
        "reward_positive": _masked_mean(s_d, positive),
        "reward_negative": _masked_mean(s_d, negative),
        "margin": _masked_mean(s_d, positive) - _masked_mean(s_d, negative),
        "num_positive": positive.sum(-1).to(s.dtype),
    }
    return LossOutput(losses, valid, metrics)


# ---------------------------------------------------------------- RPO


def cosine_similarity_matrix(a: Tensor, b: Tensor | None = None, eps: float = 1e-8) -> Tensor:
    """Pairwise cosine similarity: ``a [N, D]``, ``b [M, D]`` (default ``a``) -> ``[N, M]``."""
    b = a if b is None else b
    return F.normalize(a, dim=-1, eps=eps) @ F.normalize(b, dim=-1, eps=eps).T


def rpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    similarity: Tensor | None = None,
    beta: float = 0.1,
    tau: float = 0.5,
    weighting: Literal["embedding", "uniform", "diagonal"] = "embedding",
    lam: float = 0.8,
    mask: Tensor | None = None,
) -> LossOutput:
    """RPO: every chosen response contrasted with every rejected response of its group.

    ``S_ij = r_w,i - r_l,j``; ``ℓ_ij = -log σ(β ω_ij S_ij)``; ``L_i = mean_j ℓ_ij``.
    * "embedding": ``ω_ij = softmax_j(similarity_ij / τ)``.
    * "uniform":   ``ω_ij = 1``.
    * "diagonal":  ``ω_ij = 1`` and ``L_i = λ ℓ_ii + (1-λ) mean_{j≠i} ℓ_ij``
      (square/paired only; with no off-diagonal column ``L_i = ℓ_ii``). The
      uniform ℓ is what reproduces DESIGN's golden 0.646559 and matches the
      paper ("treating the other non-diagonal terms evenly").

    Paired data: ``Bc == Br`` and row i / column i come from the same prompt.
    Unpaired data: ``Bc != Br`` is allowed; ``similarity [Bc, Br]`` is the
    cosine between the prompt of chosen item i and the prompt of rejected item j.

    Args:
        policy_chosen, ref_chosen: ``[Bc]``; policy_rejected, ref_rejected: ``[Br]``.
        similarity: ``[Bc, Br]`` cosines (see :func:`cosine_similarity_matrix`);
            required for "embedding", ignored otherwise.
        mask: optional ``[Bc, Br]`` bool of pairs that may be contrasted, e.g. a
            block-diagonal mask to evaluate several contrast groups in one call
            (each row needs at least one True; for "diagonal", its own column).
    Metrics: ``reward_chosen [Bc]``, ``margin`` (mean_j S_ij·β), ``accuracy`` (fraction of j with S_ij > 0).
    """
    chosen = beta * (policy_chosen - ref_chosen)
    rejected = beta * (policy_rejected - ref_rejected)
    margins = chosen.unsqueeze(1) - rejected.unsqueeze(0)  # β S_ij, [Bc, Br]
    if mask is None:
        mask = torch.ones_like(margins, dtype=torch.bool)
    if weighting == "embedding":
        if similarity is None:
            raise ValueError("embedding weighting needs a similarity matrix")
        log_w = _masked_log_softmax(similarity.to(margins.dtype) / tau, mask)
        margins = margins * log_w.exp()
    elif weighting not in ("uniform", "diagonal"):
        raise ValueError(f"unknown RPO weighting {weighting!r}")
    ell = -F.logsigmoid(margins)
    if weighting == "diagonal":
        if ell.shape[0] != ell.shape[1]:
            raise ValueError("diagonal weighting needs paired (square) data")
        eye = torch.eye(ell.shape[0], dtype=torch.bool, device=ell.device)
        off = mask & ~eye
        has_off = off.any(-1)
        lam_i = torch.where(has_off, torch.full_like(ell[:, 0], lam), torch.ones_like(ell[:, 0]))
        losses = lam_i * ell.diagonal() + (1 - lam_i) * _masked_mean(ell, off)
    else:
        losses = _masked_mean(ell, mask)
    raw = (chosen.unsqueeze(1) - rejected.unsqueeze(0)).detach()
    metrics = {
        "reward_chosen": chosen.detach(),
        "margin": _masked_mean(raw, mask),
        "accuracy": _masked_mean((raw > 0).to(raw.dtype), mask),
    }
    return LossOutput(losses, mask.any(-1), metrics)


# ---------------------------------------------------------------- CPO


def cpo_loss(
    policy_logps: Tensor,
    ref_logps: Tensor,
    beta: float = 0.1,
    order: Tensor | None = None,
    mask: Tensor | None = None,
    nll: Tensor | None = None,
    alpha_mle: float = 0.0,
) -> LossOutput:
    """Sequence-level CPO; the ground truth ``y_1`` sits at index 0.

    * Unranked (``order=None``): ``L = -log softmax(s)_0``.
    * Ranked, Plackett–Luce with ``order [B, K]`` (``order[b, k]`` = index of the
      k-th best response, ground truth first):
      ``L = -Σ_k (s_π(k) - logsumexp_{j≥k} s_π(j))``; padded entries are dropped
      from the ranking wherever they appear in ``order``.
    * Combined objective ``α_mle · NLL(y_1) + L_CPO``: the loss only sees summed
      log-probs, so the trainer passes ``nll [B]`` = mean per-token NLL of the
      ground truth under the policy (``-logp_1 / n_tokens_1``, with gradient).

    Args:
        policy_logps, ref_logps: ``[B, K]``; mask: optional ``[B, K]`` bool.
    Metrics: ``reward_chosen`` (s_0), ``reward_rejected`` (mean s of the rest),
    ``margin``, ``accuracy`` (s_0 above every other response), ``cpo`` (L_CPO alone).
    """
    s, mask = _rewards(policy_logps, ref_logps, beta, mask)
    if order is None:
        losses = -_masked_log_softmax(s, mask)[:, 0]
    else:
        s_o, m_o = s.gather(-1, order), mask.gather(-1, order)
        K = s.shape[-1]
        eye = torch.eye(K, dtype=torch.bool, device=s.device)
        # tail[b, k, j]: j is a real response ranked at or after k. The
        # diagonal is always in, so no logsumexp set is empty (no NaN grads).
        tail = eye.cumsum(-1).bool() & (m_o.unsqueeze(1) | eye)
        terms = s_o - _masked_logsumexp(s_o.unsqueeze(1).expand(-1, K, -1), tail)
        losses = -torch.where(m_o, terms, torch.zeros_like(terms)).sum(-1)
    cpo = losses.detach()
    if nll is not None:
        losses = losses + alpha_mle * nll
    s_d = s.detach()
    others = mask.clone()
    others[:, 0] = False
    best_other = s_d.masked_fill(~others, float("-inf")).amax(-1)
    metrics = {
        "reward_chosen": s_d[:, 0],
        "reward_rejected": _masked_mean(s_d, others),
        "margin": s_d[:, 0] - _masked_mean(s_d, others),
        "accuracy": (s_d[:, 0] > best_other).to(s.dtype),
        "cpo": cpo,
    }
    return LossOutput(losses, mask[:, 0], metrics)


# ---------------------------------------------------------------- InfoNCA / NCA


def _score_targets(scores: Tensor, mask: Tensor, temperature: float, dtype: torch.dtype) -> Tensor:
    """``q = softmax(S / T)`` over real responses; 0 on padding."""
    scores = torch.where(mask, scores, torch.zeros_like(scores)).to(dtype)
    return torch.where(mask, _masked_log_softmax(scores / temperature, mask).exp(), torch.zeros_like(scores))


def infonca_loss(
    policy_logps: Tensor,
    ref_logps: Tensor,
    scores: Tensor,
    beta: float = 0.1,
    temperature: float = 1.0,
    mask: Tensor | None = None,
) -> LossOutput:
    """InfoNCA: ``q = softmax(S / T)``; ``L = -Σ_i q_i log softmax(s)_i``.

    Args: policy_logps, ref_logps, scores: ``[B, K]``; mask: optional ``[B, K]`` bool.
    Metrics: ``reward_mean``, ``reward_target`` (q-weighted mean of s), ``target_entropy``.
    """
    s, mask = _rewards(policy_logps, ref_logps, beta, mask)
    q = _score_targets(scores, mask, temperature, s.dtype)
    losses = -(q * _masked_log_softmax(s, mask)).sum(-1)
    return LossOutput(losses, mask.any(-1), _nce_metrics(s, q, mask))


def nca_loss(
    policy_logps: Tensor,
    ref_logps: Tensor,
    scores: Tensor,
    beta: float = 0.1,
    temperature: float = 1.0,
    mask: Tensor | None = None,
) -> LossOutput:
    """NCA: ``L = -Σ_i q_i log σ(s_i) - (1/K) Σ_i log σ(-s_i)``, ``q = softmax(S / T)``.

    ``K`` is the number of real responses of each group.
    Args and metrics as :func:`infonca_loss`.
    """
    s, mask = _rewards(policy_logps, ref_logps, beta, mask)
    q = _score_targets(scores, mask, temperature, s.dtype)
    zero = torch.zeros_like(s)
    losses = -(q * F.logsigmoid(s)).sum(-1) - _masked_mean(torch.where(mask, F.logsigmoid(-s), zero), mask)
    return LossOutput(losses, mask.any(-1), _nce_metrics(s, q, mask))


def _nce_metrics(s: Tensor, q: Tensor, mask: Tensor) -> dict[str, Tensor]:
    s, q = s.detach(), q.detach()
    return {
        "reward_mean": _masked_mean(s, mask),
        "reward_target": (q * s).sum(-1),
        "target_entropy": -(q * torch.where(mask, q.clamp_min(1e-30).log(), torch.zeros_like(q))).sum(-1),
    }
