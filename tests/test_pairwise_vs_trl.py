"""The pairwise losses (train.loss dpo, ipo, hinge, robust_dpo, nca_pair) against TRL's own DPOTrainer code.

TRL computes its loss inside ``DPOTrainer._compute_loss`` from the model's per-token log-probs. The test runs that
method itself on a stand-in trainer and model that hand it fixed per-token log-probs, and the project's objective on
the same values, summed per response as its log-prob code does.
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from configs.train import TrainConfig
from training.objective import implicit_logps, pairwise_loss

trl_dpo = pytest.importorskip("trl.trainer.dpo_trainer")

B, T = 4, 7  # pairs, tokens per padded sequence (prompt then completion)


def _trl_loss(
    loss_type: str,
    per_token: torch.Tensor,
    completion: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    label_smoothing: float,
) -> float:
    """TRL's loss for ``[2B, T]`` per-token log-probs (chosen rows first, zero outside the completion)."""
    zeros = torch.zeros_like(per_token)

    def model(**_):
        return SimpleNamespace(log_probs=per_token[:, 1:], entropy=zeros, mean_logits=zeros, is_top1=zeros.bool())

    accelerator = SimpleNamespace(device="cpu", gather=lambda x: x, gather_for_metrics=lambda x: x)
    trainer = SimpleNamespace(
        model=SimpleNamespace(training=True),
        accelerator=accelerator,
        aux_loss_enabled=False,
        ld_alpha=None,
        precompute_ref_logps=True,
        f_divergence_type="reverse_kl",
        loss_types=[loss_type],
        loss_weights=[1.0],
        beta=beta,
        label_smoothing=label_smoothing,
        use_weighting=False,
        _metrics=defaultdict(lambda: defaultdict(list)),
        _total_train_tokens=0,
        _tp_size=1,
    )
    inputs = {
        "input_ids": torch.ones(2 * B, T, dtype=torch.long),
        "attention_mask": torch.ones(2 * B, T, dtype=torch.long),
        "completion_mask": completion,
        "ref_chosen_logps": ref_chosen,
        "ref_rejected_logps": ref_rejected,
    }
    return float(trl_dpo.DPOTrainer._compute_loss(trainer, model, inputs, return_outputs=False))


@pytest.mark.parametrize(
    "loss, loss_type, normalization",
    [
        ("dpo", "sigmoid", "sum"),
        ("dpo", "sigmoid_norm", "mean"),
        ("ipo", "ipo", "mean"),
        ("hinge", "hinge", "sum"),
        ("robust_dpo", "robust", "sum"),
        ("nca_pair", "nca_pair", "sum"),
    ],
)
def test_pairwise_loss_equals_trl(loss, loss_type, normalization):
    g = torch.Generator().manual_seed(7)
    lengths = torch.tensor([2, 5, 3, 6, 4, 1, 6, 2])  # completion tokens of the 2B sequences
    completion = (torch.arange(T) >= T - lengths.unsqueeze(1)).long()  # the completion ends each row
    per_token = -torch.rand(2 * B, T, generator=g, dtype=torch.float64) * 3 * completion
    ref = -torch.rand(2 * B, generator=g, dtype=torch.float64) * lengths * 3
    tc = TrainConfig(loss=loss, beta=0.3, label_smoothing=0.2, reward_normalization=normalization)

    expected = _trl_loss(loss_type, per_token, completion, ref[:B], ref[B:], tc.beta, tc.label_smoothing)
    policy, reference = implicit_logps(tc, per_token.sum(-1).view(2, B).T, ref.view(2, B).T, lengths.view(2, B).T)
    ours = pairwise_loss(tc)(policy[:, 0], policy[:, 1], reference[:, 0], reference[:, 1]).losses.mean()
    assert float(ours) == pytest.approx(expected, rel=1e-9, abs=1e-12)
