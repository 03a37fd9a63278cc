"""The configured preference loss on a batch of contrast groups (dispatch over ``training.losses``)."""

from __future__ import annotations

import torch
from torch import Tensor

from configs.train import PAIRWISE_LOSSES, TrainConfig
from training import losses as L
from training.batches import Batch

NEEDS_SCORES = {"swepo", "infonca", "nca"}
TIE = 1e-4  # implicit rewards (beta-scaled) closer than this are equal
LENGTH_BAND = 0.1  # length-controlled accuracy: pairs whose token counts differ by less than this fraction


def _rejected_index(batch: Batch) -> Tensor:
    """Per prompt, the response contrasted with the anchor (index 0) under ``pairing: anchor``: origin 'rejected',
    else the lowest-scored other response, else the first other response."""
    others = batch.mask.clone()
    others[:, 0] = False
    if batch.scores is not None:
        fallback = batch.scores.masked_fill(~others, float("inf")).argmin(-1)
    else:
        fallback = torch.ones(batch.mask.shape[0], dtype=torch.long, device=batch.mask.device)
    has_rejected = batch.is_rejected.any(-1)
    return torch.where(has_rejected, batch.is_rejected.float().argmax(-1), fallback).clamp(max=batch.mask.shape[1] - 1)


def has_negative(batch: Batch) -> Tensor:
    """``[P]`` prompts with at least one response besides the anchor (all synthetic negatives may have
    been dropped as copies of the ground truth); the others cannot be contrasted and are skipped."""
    return batch.mask.sum(-1) >= 2


def pairing_of(tc: TrainConfig, batch: Batch) -> str:
    """The pairing in effect: ``auto`` is ``best_worst`` on scored shards, else ``anchor``."""
    if tc.pairing == "auto":
        return "best_worst" if batch.scores is not None else "anchor"
    if tc.pairing != "anchor" and batch.scores is None:
        raise ValueError(
            f"train.pairing={tc.pairing} needs response scores; the shards have none (set prepare.reward "
            "or train.pairing: anchor)"
        )
    return tc.pairing


def pair_indices(tc: TrainConfig, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
    """``([P] chosen, [P] rejected, [P] valid)`` response indices of the pair each prompt contributes to DPO and RPO
    (``best_each`` pairs the same chosen with every lower-scored response: see :func:`_best_each`).
    A prompt without two responses, or whose best and worst responses score the same, is not valid."""
    if pairing_of(tc, batch) == "anchor":
        return (
            torch.zeros(batch.mask.shape[0], dtype=torch.long, device=batch.mask.device),
            _rejected_index(batch),
            has_negative(batch),
        )
    best = batch.scores.masked_fill(~batch.mask, float("-inf"))
    worst = batch.scores.masked_fill(~batch.mask, float("inf"))
    # argmax takes the first of equal maxima: on a tie the anchor stays chosen
    return best.argmax(-1), worst.argmin(-1), best.amax(-1) > worst.amin(-1)


def pairwise_loss(tc: TrainConfig):
    """The pairwise loss ``train.loss`` names, as ``fn(policy_chosen, policy_rejected, ref_chosen, ref_rejected)``."""
    if tc.loss == "robust_dpo":
        return lambda *logps: L.robust_dpo_loss(*logps, beta=tc.beta, label_smoothing=tc.label_smoothing)
    fn = {"dpo": L.dpo_loss, "ipo": L.ipo_loss, "hinge": L.hinge_loss, "nca_pair": L.nca_pair_loss}[tc.loss]
    return lambda *logps: fn(*logps, beta=tc.beta)


def _best_each(tc: TrainConfig, batch: Batch, policy: Tensor, ref: Tensor) -> L.LossOutput:
    """DPO x (k-1): per prompt, the mean pairwise loss of the best-scored response against each lower-scored one."""
    scores = batch.scores.masked_fill(~batch.mask, float("inf"))
    best = batch.scores.masked_fill(~batch.mask, float("-inf")).argmax(-1, keepdim=True)
    lower = batch.mask & (scores < scores.gather(1, best))
    out = pairwise_loss(tc)(policy.gather(1, best).expand_as(policy), policy, ref.gather(1, best).expand_as(ref), ref)
    n = lower.sum(-1).clamp(min=1)
    return L.LossOutput(
        (out.losses * lower).sum(-1) / n, lower.any(-1), {"margin": (out.metrics["margin"] * lower).sum(-1) / n}
    )


def implicit_accuracy(rewards: Tensor, batch: Batch, pairs: Tensor | None = None) -> tuple[float, int]:
    """(correct, pairs) over response pairs ordered by label: scores when present, else anchor above the rest;
    ``pairs`` (``[P, K, K]``) restricts the count to some pairs.

    A tie counts half, so a policy equal to its reference scores exactly 0.5. Rewards closer than
    ``TIE`` are a tie: the stored reference log-probs come from another batch layout than the policy's,
    which moves float32 sums by ~1e-5 and would otherwise turn exact ties into coin flips.
    """
    labels = (
        batch.scores
        if batch.scores is not None
        else (torch.arange(batch.mask.shape[1], device=rewards.device) == 0).float().expand_as(rewards)
    )
    better = (labels.unsqueeze(-1) > labels.unsqueeze(-2)) & batch.mask.unsqueeze(-1) & batch.mask.unsqueeze(-2)
    if pairs is not None:
        better &= pairs
    diff = rewards.unsqueeze(-1) - rewards.unsqueeze(-2)
    correct = ((diff > TIE).float() + 0.5 * (diff.abs() <= TIE).float())[better].sum()
    return float(correct), int(better.sum())


def length_metric_sums(rewards: Tensor, batch: Batch, token_counts: Tensor) -> dict[str, float]:
    """What length does to the implicit rewards ``[P, K]``, as sums to add over batches and ranks:
    the within-prompt (Pearson) correlation of reward and token count over prompts whose responses differ in
    length; accuracy on label-ordered pairs whose lengths differ by less than ``LENGTH_BAND`` (length-controlled
    accuracy); the token count of the response each prompt's rewards rank first."""
    mask, n = batch.mask, token_counts.to(rewards.dtype)
    k = mask.sum(-1, keepdim=True).clamp(min=1)
    rc = (rewards - (rewards * mask).sum(-1, keepdim=True) / k) * mask
    nc = (n - (n * mask).sum(-1, keepdim=True) / k) * mask
    denom = (rc.pow(2).sum(-1) * nc.pow(2).sum(-1)).sqrt()
    spread = denom > 1e-12
    corr = (rc * nc).sum(-1)[spread] / denom[spread]
    similar = (n.unsqueeze(-1) - n.unsqueeze(-2)).abs() < LENGTH_BAND * torch.maximum(n.unsqueeze(-1), n.unsqueeze(-2))
    lc_correct, lc_pairs = implicit_accuracy(rewards, batch, similar)
    top = rewards.masked_fill(~mask, float("-inf")).argmax(-1)
    return {
        "length_corr_sum": float(corr.sum()),
        "length_corr_prompts": int(spread.sum()),
        "lc_correct": lc_correct,
        "lc_pairs": lc_pairs,
        "top_tokens_sum": float(n[torch.arange(len(top), device=top.device), top].sum()),
        "top_prompts": len(top),
    }


def reward_metric_sums(rewards: Tensor, batch: Batch, token_counts: Tensor) -> dict[str, float]:
    """The implicit rewards' ``[P, K]`` figures as sums to add over batches and ranks (``heldout_metrics.RATIOS``
    makes them ratios): label-ordered pairs ranked right, and :func:`length_metric_sums`."""
    correct, pairs = implicit_accuracy(rewards, batch)
    return {"accuracy_correct": correct, "accuracy_pairs": pairs, **length_metric_sums(rewards, batch, token_counts)}


def implicit_logps(tc: TrainConfig, policy: Tensor, ref: Tensor, token_counts: Tensor) -> tuple[Tensor, Tensor]:
    """The log-probs every loss contrasts (its implicit reward is ``beta * (policy - ref)``): the summed ones
    (``train.reward_normalization: sum``), or per response token (``mean``); then R-DPO's length term,
    ``- length_penalty * |y|`` on the reward, moved onto the policy side.

    Args: ``[P, K]`` summed log-probs and response token counts (0 where padded)."""
    if tc.reward_normalization == "mean":
        n = token_counts.clamp(min=1).to(policy.dtype)
        policy, ref = policy / n, ref / n
    if tc.length_penalty:
        policy = policy - tc.length_penalty / tc.beta * token_counts.to(policy.dtype)
    return policy, ref


def preference_loss(
    tc: TrainConfig, batch: Batch, policy: Tensor, ref: Tensor, token_counts: Tensor
) -> tuple[Tensor, dict]:
    """Mean loss over valid prompts and detached metrics.

    Args:
        policy, ref: ``[P, K]`` summed response log-probs (ref from shards or a live model).
        token_counts: ``[P, K]`` response tokens (the anchor NLL of CPO and of the SFT control).
    """
    if tc.loss in NEEDS_SCORES and batch.scores is None:
        raise ValueError(f"train.loss={tc.loss} needs response scores; the shards have none (set prepare.reward)")
    if tc.loss == "cpo" and tc.cpo_ranked and batch.order is None:
        raise ValueError(
            "train.cpo_ranked needs the similarity ranks the prepare job stores for rows with a ground truth; "
            "these shards have none"
        )
    P = policy.shape[0]
    rows = torch.arange(P, device=policy.device)
    anchor_nll = -policy[:, 0] / token_counts[:, 0].clamp(min=1)  # mean token NLL of the ground truth
    policy, ref = implicit_logps(tc, policy, ref, token_counts)
    contrastable = has_negative(batch)
    if tc.loss in PAIRWISE_LOSSES and pairing_of(tc, batch) == "best_each":
        out = _best_each(tc, batch, policy, ref)
    elif tc.loss in PAIRWISE_LOSSES:
        chosen, rej, contrastable = pair_indices(tc, batch)
        out = pairwise_loss(tc)(policy[rows, chosen], policy[rows, rej], ref[rows, chosen], ref[rows, rej])
    elif tc.loss == "swepo":
        out = L.swepo_loss(
            policy,
            ref,
            batch.scores,
            batch.mask,
            beta=tc.beta,
            alpha=tc.swepo_alpha,
            p=tc.swepo_p,
            weighting=tc.swepo_weighting,
            mode=tc.swepo_mode,
        )
    elif tc.loss == "rpo":
        chosen, rej, contrastable = pair_indices(tc, batch)
        out = _rpo(tc, batch, policy, ref, chosen, rej, contrastable)
    elif tc.loss == "sft":
        # The comparisons' control: the same steps on the anchors alone, no negatives.
        out = L.LossOutput(anchor_nll, torch.ones(P, dtype=torch.bool, device=policy.device), {})
    elif tc.loss == "cpo":
        nll = anchor_nll if tc.cpo_alpha_mle else None
        out = L.cpo_loss(
            policy,
            ref,
            beta=tc.beta,
            order=batch.order if tc.cpo_ranked else None,
            mask=batch.mask,
            nll=nll,
            alpha_mle=tc.cpo_alpha_mle,
        )
    else:
        fn = L.infonca_loss if tc.loss == "infonca" else L.nca_loss
        out = fn(policy, ref, batch.scores, beta=tc.beta, temperature=tc.temperature, mask=batch.mask)
    # Every contrastive term needs a negative; CPO's NLL term does not, so those prompts keep it.
    keeps_nll = tc.loss == "sft" or (tc.loss == "cpo" and tc.cpo_alpha_mle > 0)
    valid = out.valid & (contrastable | keeps_nll)
    loss = (out.losses * valid).sum() / valid.sum().clamp(min=1)
    metrics = {
        "loss": float(loss.detach()),
        "prompts": P,
        "skipped_prompts": int((~valid).sum()),
        **reward_metric_sums(tc.beta * (policy - ref).detach(), batch, token_counts),
    }
    if "margin" in out.metrics:
        metrics["margin"] = float(out.metrics["margin"][valid].mean()) if valid.any() else 0.0
    return loss, metrics


def _rpo(
    tc: TrainConfig, batch: Batch, policy: Tensor, ref: Tensor, chosen: Tensor, rej: Tensor, usable: Tensor
) -> L.LossOutput:
    """RPO per contrast group on each prompt's pair (``[P]`` indices, ``usable`` where valid); paired rows are
    prompts, unpaired columns are every response of the group but its prompt's chosen one."""
    outs = []
    for g, sim in enumerate(batch.similarity):
        rows = (batch.group_of_prompt == g).nonzero().flatten()
        if tc.rpo_paired:
            # A prompt without a negative has no rejected column to offer, and no contrast of its own.
            pairs = usable[rows].unsqueeze(0) & usable[rows].unsqueeze(1)
            pairs |= ~usable[rows].unsqueeze(1) & torch.eye(
                len(rows), dtype=torch.bool, device=rows.device
            )  # keep every row non-empty
            out = L.rpo_loss(
                policy[rows, chosen[rows]],
                policy[rows, rej[rows]],
                ref[rows, chosen[rows]],
                ref[rows, rej[rows]],
                similarity=sim,
                beta=tc.beta,
                tau=tc.rpo_tau,
                weighting=tc.rpo_weighting,
                lam=tc.rpo_lambda,
                mask=pairs,
            )
        else:
            neg = batch.mask[rows].clone()
            neg[torch.arange(len(rows), device=rows.device), chosen[rows]] = False
            owner, col = neg.nonzero(as_tuple=True)
            out = L.rpo_loss(
                policy[rows, chosen[rows]],
                policy[rows[owner], col],
                ref[rows, chosen[rows]],
                ref[rows[owner], col],
                similarity=sim[:, owner],
                beta=tc.beta,
                tau=tc.rpo_tau,
                weighting=tc.rpo_weighting,
                lam=tc.rpo_lambda,
            )
        outs.append(out)
    return L.LossOutput(
        torch.cat([o.losses for o in outs]),
        torch.cat([o.valid for o in outs]),
        {"margin": torch.cat([o.metrics["margin"] for o in outs])},
    )
