"""Losses: DESIGN.md golden values, gradients, identities and masking."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from configs.train import TrainConfig
from training.losses import (
    cosine_similarity_matrix,
    cpo_loss,
    dpo_loss,
    infonca_loss,
    nca_loss,
    rpo_loss,
    swepo_loss,
)
from training.objective import implicit_logps

D = torch.float64
TOL = 1e-5

# DESIGN.md "Golden values" (beta = 0.1), inputs A.
A_POLICY = torch.tensor([[-10.0, -12.0, -11.0, -15.0]], dtype=D)
A_REF = torch.tensor([[-11.0, -11.0, -11.0, -14.0]], dtype=D)
A_SCORES = torch.tensor([[8.0, 6.0, 6.5, 3.0]], dtype=D)

RPO_PC = torch.tensor([-10.0, -20.0, -15.0], dtype=D)
RPO_PR = torch.tensor([-12.0, -19.0, -18.0], dtype=D)
RPO_RC = torch.tensor([-11.0, -20.0, -16.0], dtype=D)
RPO_RR = torch.tensor([-11.0, -20.0, -17.0], dtype=D)
RPO_EMB = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.0, 0.6, 0.8]], dtype=D)


def close(actual: Tensor, expected: float | list[float]) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), atol=TOL, rtol=0)


# ---------------------------------------------------------------- golden values


def test_golden_dpo() -> None:
    out = dpo_loss(
        torch.tensor([-10.0, -5.0], dtype=D),
        torch.tensor([-12.0, -4.0], dtype=D),
        torch.tensor([-11.0, -6.0], dtype=D),
        torch.tensor([-11.0, -6.0], dtype=D),
        beta=0.1,
    )
    close(out.losses, [0.598139, 0.744397])
    close(out.losses.mean(), 0.671268)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"weighting": "signed"}, 0.004194),
        ({"weighting": "abs", "p": 1.0}, 0.841728),
        ({"weighting": "abs", "p": 2.0}, 3.555538),
        ({"weighting": "abs", "p": 0.0}, 0.262833),
        ({"weighting": "abs", "p": 1.0, "mode": "1_vs_k"}, 1.113814),
    ],
    ids=["signed", "abs_p1", "abs_p2", "unweighted", "1_vs_k"],
)
def test_golden_swepo(kwargs: dict, expected: float) -> None:
    out = swepo_loss(A_POLICY, A_REF, A_SCORES, beta=0.1, alpha=1.0, **kwargs)
    close(out.losses, [expected])
    assert out.valid.tolist() == [True]


def test_golden_infonca_nca() -> None:
    close(infonca_loss(A_POLICY, A_REF, A_SCORES, beta=0.1, temperature=1.0).losses, [1.301934])
    close(nca_loss(A_POLICY, A_REF, A_SCORES, beta=0.1, temperature=1.0).losses, [1.344356])


@pytest.mark.parametrize(
    ("order", "expected"),
    [(None, 1.264776), ([0, 1, 2, 3], 3.042241), ([0, 2, 1, 3], 2.990992)],
    ids=["unranked", "pl_0123", "pl_0213"],
)
def test_golden_cpo(order: list[int] | None, expected: float) -> None:
    order_t = None if order is None else torch.tensor([order])
    close(cpo_loss(A_POLICY, A_REF, beta=0.1, order=order_t).losses, [expected])


@pytest.mark.parametrize(
    ("weighting", "expected"),
    [("embedding", 0.677858), ("uniform", 0.645782), ("diagonal", 0.646559)],
)
def test_golden_rpo(weighting: str, expected: float) -> None:
    sim = cosine_similarity_matrix(RPO_EMB)
    out = rpo_loss(RPO_PC, RPO_PR, RPO_RC, RPO_RR, sim, beta=0.1, tau=0.5, weighting=weighting, lam=0.8)
    close(out.losses.mean(), expected)


def test_cosine_similarity_matrix() -> None:
    sim = cosine_similarity_matrix(RPO_EMB)
    close(sim[0], [1.0, 0.6, 0.0])
    close(sim[1, 2], 0.48)
    assert cosine_similarity_matrix(RPO_EMB[:2], RPO_EMB).shape == (2, 3)


# ---------------------------------------------------------------- gradients


def _rand(*shape: int, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return (-10 - 5 * torch.rand(*shape, generator=g, dtype=D)).requires_grad_()


def _gradcheck(fn: Callable[..., Tensor], *inputs: Tensor) -> None:
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


B, K = 3, 4
SCORES = torch.tensor([[8.0, 6.0, 6.5, 3.0], [1.0, 2.0, 2.0, 0.5], [0.3, -1.0, 2.0, 0.0]], dtype=D)
MASK = torch.tensor([[True] * 4, [True, True, True, False], [True, True, False, False]])


def test_gradcheck_dpo() -> None:
    _gradcheck(lambda *x: dpo_loss(*x).losses, *(_rand(B, seed=i) for i in range(4)))


@pytest.mark.parametrize("weighting", ["abs", "signed"])
@pytest.mark.parametrize("mode", ["k1_vs_k2", "1_vs_k"])
@pytest.mark.parametrize("p", [0.0, 1.0, 2.0])
def test_gradcheck_swepo(weighting: str, mode: str, p: float) -> None:
    fn = lambda lp, ref: swepo_loss(lp, ref, SCORES, MASK, p=p, weighting=weighting, mode=mode).losses  # noqa: E731
    _gradcheck(fn, _rand(B, K, seed=1), _rand(B, K, seed=2))


@pytest.mark.parametrize("weighting", ["embedding", "uniform", "diagonal"])
def test_gradcheck_rpo(weighting: str) -> None:
    sim = cosine_similarity_matrix(RPO_EMB)
    fn = lambda *x: rpo_loss(*x, similarity=sim, weighting=weighting).losses  # noqa: E731
    _gradcheck(fn, *(_rand(3, seed=i) for i in range(4)))


def test_gradcheck_rpo_unpaired() -> None:
    sim = cosine_similarity_matrix(RPO_EMB[:2], RPO_EMB)
    fn = lambda pc, pr, rc, rr: rpo_loss(pc, pr, rc, rr, similarity=sim).losses  # noqa: E731
    _gradcheck(fn, _rand(2, seed=0), _rand(3, seed=1), _rand(2, seed=2), _rand(3, seed=3))


@pytest.mark.parametrize("ranked", [False, True])
def test_gradcheck_cpo(ranked: bool) -> None:
    order = torch.tensor([[0, 2, 1, 3], [0, 3, 1, 2], [0, 1, 3, 2]]) if ranked else None
    nll = _rand(B, seed=9)
    fn = lambda lp, ref, n: cpo_loss(lp, ref, order=order, mask=MASK, nll=n, alpha_mle=0.5).losses  # noqa: E731
    _gradcheck(fn, _rand(B, K, seed=1), _rand(B, K, seed=2), nll)


@pytest.mark.parametrize("loss_fn", [infonca_loss, nca_loss])
@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_gradcheck_nce(loss_fn: Callable, temperature: float) -> None:
    fn = lambda lp, ref: loss_fn(lp, ref, SCORES, temperature=temperature, mask=MASK).losses  # noqa: E731
    _gradcheck(fn, _rand(B, K, seed=1), _rand(B, K, seed=2))


# ---------------------------------------------------------------- identities


def _dpo_reference(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor) -> Tensor:
    return dpo_loss(pc, pr, rc, rr, beta=0.1).losses


def test_rpo_uniform_single_prompt_is_dpo() -> None:
    pc, pr, rc, rr = (_rand(1, seed=i).detach() for i in range(4))
    for weighting in ("uniform", "embedding", "diagonal"):
        out = rpo_loss(pc, pr, rc, rr, torch.ones(1, 1, dtype=D), weighting=weighting)
        torch.testing.assert_close(out.losses, _dpo_reference(pc, pr, rc, rr))


def test_rpo_diagonal_lambda_one_is_dpo() -> None:
    out = rpo_loss(RPO_PC, RPO_PR, RPO_RC, RPO_RR, weighting="diagonal", lam=1.0)
    torch.testing.assert_close(out.losses, _dpo_reference(RPO_PC, RPO_PR, RPO_RC, RPO_RR))


def test_swepo_two_responses_p0_is_dpo() -> None:
    lp, ref = _rand(5, 2, seed=3).detach(), _rand(5, 2, seed=4).detach()
    scores = torch.tensor([[1.0, 0.0]] * 5, dtype=D)
    for mode in ("k1_vs_k2", "1_vs_k"):
        out = swepo_loss(lp, ref, scores, p=0.0, mode=mode)
        torch.testing.assert_close(out.losses, _dpo_reference(lp[:, 0], lp[:, 1], ref[:, 0], ref[:, 1]))


def test_cpo_two_responses_is_dpo() -> None:
    lp, ref = _rand(5, 2, seed=3).detach(), _rand(5, 2, seed=4).detach()
    expected = _dpo_reference(lp[:, 0], lp[:, 1], ref[:, 0], ref[:, 1])
    torch.testing.assert_close(cpo_loss(lp, ref).losses, expected)
    # Plackett–Luce on two items is the same pairwise term.
    torch.testing.assert_close(cpo_loss(lp, ref, order=torch.tensor([[0, 1]] * 5)).losses, expected)


def test_cpo_nll_term() -> None:
    nll = torch.tensor([2.0], dtype=D)
    base = cpo_loss(A_POLICY, A_REF).losses
    out = cpo_loss(A_POLICY, A_REF, nll=nll, alpha_mle=0.3)
    torch.testing.assert_close(out.losses, base + 0.6)
    torch.testing.assert_close(out.metrics["cpo"], base)


def test_swepo_all_equal_scores_is_invalid() -> None:
    lp, ref = _rand(2, 3, seed=1), _rand(2, 3, seed=2)
    scores = torch.tensor([[2.0, 2.0, 2.0], [3.0, 1.0, 2.0]], dtype=D)
    for mode in ("k1_vs_k2", "1_vs_k"):
        out = swepo_loss(lp, ref, scores, mode=mode)
        assert out.valid.tolist() == [False, True]
        assert out.losses[0].item() == 0.0
        (lp_grad,) = torch.autograd.grad(out.losses.sum(), lp)
        assert torch.equal(lp_grad[0], torch.zeros(3, dtype=D))
        assert torch.isfinite(lp_grad).all() and lp_grad[1].abs().sum() > 0


def test_swepo_equal_real_scores_with_padding_is_invalid() -> None:
    # The padded score differs, but padding must not create a positive.
    out = swepo_loss(
        A_POLICY[:, :3],
        A_REF[:, :3],
        torch.tensor([[1.0, 1.0, 9.0]], dtype=D),
        mask=torch.tensor([[True, True, False]]),
    )
    assert out.valid.tolist() == [False]


# ---------------------------------------------------------------- masking


def _padded(lp: Tensor, ref: Tensor, scores: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Append one padded response holding garbage, including NaN and inf."""
    junk = torch.tensor([[float("nan")], [float("inf")], [-3.0]], dtype=D)[: lp.shape[0]]
    lp_p = torch.cat([lp, junk], -1).detach().requires_grad_()
    ref_p = torch.cat([ref, -junk], -1).detach().requires_grad_()
    scores_p = torch.cat([scores, torch.full_like(junk, 100.0)], -1)
    mask = torch.ones_like(lp_p, dtype=torch.bool)
    mask[:, -1] = False
    return lp_p, ref_p, scores_p, mask


LOSSES_WITH_SCORES: dict[str, Callable[..., Tensor]] = {
    "swepo_abs": lambda lp, ref, s, m: swepo_loss(lp, ref, s, m, p=1.0).losses,
    "swepo_signed_1vk": lambda lp, ref, s, m: swepo_loss(lp, ref, s, m, weighting="signed", mode="1_vs_k").losses,
    "infonca": lambda lp, ref, s, m: infonca_loss(lp, ref, s, mask=m).losses,
    "nca": lambda lp, ref, s, m: nca_loss(lp, ref, s, mask=m).losses,
    "cpo": lambda lp, ref, s, m: cpo_loss(lp, ref, mask=m).losses,
    # Padding placed in the middle of the ranking must be skipped too.
    "cpo_ranked": lambda lp, ref, s, m: (
        cpo_loss(lp, ref, mask=m, order=torch.tensor([[0, 3, 4, 1, 2]] * lp.shape[0])[:, : lp.shape[1]]).losses
    ),
}


@pytest.mark.parametrize("name", sorted(LOSSES_WITH_SCORES))
def test_masking_equals_dropping(name: str) -> None:
    fn = LOSSES_WITH_SCORES[name]
    lp, ref = _rand(3, 4, seed=5).detach(), _rand(3, 4, seed=6).detach()
    scores = SCORES.clone()
    if name == "cpo_ranked":  # order refers to indices 0..4, so the padded slot is index 4
        expected = cpo_loss(lp, ref, order=torch.tensor([[0, 3, 1, 2]] * 3)).losses
    else:
        expected = fn(lp, ref, scores, torch.ones(3, 4, dtype=torch.bool))
    lp_p, ref_p, scores_p, mask = _padded(lp, ref, scores)
    actual = fn(lp_p, ref_p, scores_p, mask)
    torch.testing.assert_close(actual, expected)
    grad_lp, grad_ref = torch.autograd.grad(actual.sum(), (lp_p, ref_p))
    for grad in (grad_lp, grad_ref):
        assert torch.isfinite(grad).all()
        assert torch.equal(grad[:, -1], torch.zeros(3, dtype=D))


def test_masking_mixed_group_sizes() -> None:
    """Batched variable-K groups give the same losses as each group alone."""
    lp, ref = _rand(3, 4, seed=7).detach(), _rand(3, 4, seed=8).detach()
    for name, fn in LOSSES_WITH_SCORES.items():
        if name == "cpo_ranked":
            continue
        batched = fn(lp, ref, SCORES, MASK)
        for b in range(3):
            k = int(MASK[b].sum())
            alone = fn(lp[b : b + 1, :k], ref[b : b + 1, :k], SCORES[b : b + 1, :k], MASK[b : b + 1, :k])
            torch.testing.assert_close(batched[b : b + 1], alone, msg=name)


def test_rpo_block_mask_equals_separate_groups() -> None:
    pc, pr, rc, rr = (_rand(5, seed=i).detach() for i in range(4))
    emb = torch.randn(5, 8, dtype=D, generator=torch.Generator().manual_seed(0))
    groups = [slice(0, 2), slice(2, 5)]
    mask = torch.zeros(5, 5, dtype=torch.bool)
    for g in groups:
        mask[g, g] = True
    for weighting in ("embedding", "uniform", "diagonal"):
        joint = rpo_loss(pc, pr, rc, rr, cosine_similarity_matrix(emb), weighting=weighting, mask=mask).losses
        for g in groups:
            alone = rpo_loss(pc[g], pr[g], rc[g], rr[g], cosine_similarity_matrix(emb[g]), weighting=weighting).losses
            torch.testing.assert_close(joint[g], alone)


def test_rpo_unpaired_shapes() -> None:
    sim = cosine_similarity_matrix(RPO_EMB[:2], RPO_EMB)
    out = rpo_loss(RPO_PC[:2], RPO_PR, RPO_RC[:2], RPO_RR, sim)
    assert out.losses.shape == (2,) and out.valid.all()
    with pytest.raises(ValueError):
        rpo_loss(RPO_PC[:2], RPO_PR, RPO_RC[:2], RPO_RR, sim, weighting="diagonal")


def test_metrics_are_detached() -> None:
    lp = A_POLICY.clone().requires_grad_()
    outs = [
        swepo_loss(lp, A_REF, A_SCORES),
        cpo_loss(lp, A_REF),
        infonca_loss(lp, A_REF, A_SCORES),
        nca_loss(lp, A_REF, A_SCORES),
        dpo_loss(lp[:, 0], lp[:, 1], A_REF[:, 0], A_REF[:, 1]),
        rpo_loss(lp[0, :3], lp[0, :3], A_REF[0, :3], A_REF[0, 1:], cosine_similarity_matrix(RPO_EMB)),
    ]
    for out in outs:
        assert out.losses.requires_grad
        assert all(not m.requires_grad for m in out.metrics.values())


def test_swepo_equal_float32_scores_have_no_positive():
    from training.losses import swepo_loss

    scores = torch.full((1, 6), 0.3, dtype=torch.float32)
    logps = torch.randn(1, 6, requires_grad=True)
    for mode in ("k1_vs_k2", "1_vs_k"):
        out = swepo_loss(logps, torch.zeros(1, 6), scores, mode=mode)
        assert not out.valid.any() and out.losses.item() == 0.0


# ------------------------------------------------------------- length-normalised rewards (train.reward_normalization)

# Token counts of the four responses of inputs A: under "mean", summed log-probs of n * A give the rewards of A.
A_TOKENS = torch.tensor([[3.0, 5.0, 2.0, 4.0]], dtype=D)
MEAN = TrainConfig(reward_normalization="mean", beta=0.1)


def _mean_inputs() -> tuple[Tensor, Tensor]:
    return implicit_logps(MEAN, A_POLICY * A_TOKENS, A_REF * A_TOKENS, A_TOKENS)


def test_golden_values_hold_under_mean_for_length_scaled_inputs() -> None:
    policy, ref = _mean_inputs()
    close(swepo_loss(policy, ref, A_SCORES, beta=0.1, alpha=1.0, weighting="abs", p=1.0).losses, [0.841728])
    close(infonca_loss(policy, ref, A_SCORES, beta=0.1, temperature=1.0).losses, [1.301934])
    close(nca_loss(policy, ref, A_SCORES, beta=0.1, temperature=1.0).losses, [1.344356])
    close(cpo_loss(policy, ref, beta=0.1, order=torch.tensor([[0, 1, 2, 3]])).losses, [3.042241])
    # DPO on responses 0 and 1 (3 and 5 tokens), by hand: beta * ((-30 + 33) / 3 - (-60 + 55) / 5) = 0.2
    close(
        dpo_loss(policy[:, 0], policy[:, 1], ref[:, 0], ref[:, 1], beta=0.1).losses,
        [-math.log(1 / (1 + math.exp(-0.2)))],
    )
    # the same summed inputs under "sum" are another loss entirely
    assert (
        abs(float(dpo_loss(*(A_POLICY * A_TOKENS)[:, :2].T, *(A_REF * A_TOKENS)[:, :2].T, beta=0.1).losses) - 0.598139)
        > 0.01
    )


def test_golden_rpo_under_mean() -> None:
    n = torch.tensor([2.0, 4.0, 5.0], dtype=D)
    pc, rc = implicit_logps(MEAN, RPO_PC * n, RPO_RC * n, n)
    pr, rr = implicit_logps(MEAN, RPO_PR * n, RPO_RR * n, n)
    out = rpo_loss(pc, pr, rc, rr, cosine_similarity_matrix(RPO_EMB), beta=0.1, tau=0.5, weighting="embedding", lam=0.8)
    close(out.losses.mean(), 0.677858)


def test_length_penalty_is_r_dpo() -> None:
    tc = TrainConfig(beta=0.1, length_penalty=0.01)
    n = torch.tensor([[3.0, 5.0]], dtype=D)
    policy, ref = implicit_logps(
        tc, torch.tensor([[-10.0, -12.0]], dtype=D), torch.tensor([[-11.0, -11.0]], dtype=D), n
    )
    # R-DPO: -log sigmoid(beta * (1 - (-1)) - alpha * (3 - 5)) = -log sigmoid(0.22)
    close(
        dpo_loss(policy[:, 0], policy[:, 1], ref[:, 0], ref[:, 1], beta=0.1).losses,
        [-math.log(1 / (1 + math.exp(-0.22)))],
    )


@pytest.mark.parametrize("loss", ["swepo", "cpo", "infonca", "nca"])
def test_gradcheck_under_mean(loss: str) -> None:
    counts = torch.tensor([[3.0, 5.0, 2.0, 4.0], [1.0, 7.0, 2.0, 0.0], [4.0, 4.0, 0.0, 0.0]], dtype=D)
    fns = {
        "swepo": lambda lp, ref: swepo_loss(lp, ref, SCORES, MASK),
        "cpo": lambda lp, ref: cpo_loss(lp, ref, mask=MASK),
        "infonca": lambda lp, ref: infonca_loss(lp, ref, SCORES, mask=MASK),
        "nca": lambda lp, ref: nca_loss(lp, ref, SCORES, mask=MASK),
    }
    _gradcheck(
        lambda lp, ref: fns[loss](*implicit_logps(MEAN, lp, ref, counts)).losses,
        _rand(B, K, seed=1),
        _rand(B, K, seed=2),
    )
