"""Training data layout and loss dispatch (no cluster): groups stay whole, data position is exact."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from configs.base import ConfigError
from configs.schema import load_config
from configs.train import TrainConfig
from orchestration.train import run_train
from training import losses as L
from training.batches import collate, pack_groups
from training.group_reader import split_heldout
from training.heldout_metrics import SUMMED, ratios
from training.objective import implicit_accuracy, length_metric_sums, preference_loss
from training.worker import step_groups

ROOT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


def _rows() -> pd.DataFrame:
    rows = []
    for g in range(3):
        for pos in range(2):
            rows.append(
                {
                    "group_id": g,
                    "group_position": pos,
                    "group_size": 2,
                    "prompt_ids": [1, 10 + g, 20 + pos],
                    "response_ids": [[5, 2], [6, 7, 2], [8, 2]],
                    "origins": ["autoregressive", "ground_truth", "truncation"],
                    "scores": [0.2, 1.0, 0.5],
                    "ref_logps": [-3.0, -2.0, -1.0],
                    "rank": [1, 2, 0],
                    "group_similarity": [1.0, 0.5] if pos == 0 else [0.5, 1.0],
                }
            )
    return pd.DataFrame(rows)


def test_groups_are_packed_whole_with_the_anchor_first():
    groups = pack_groups(_rows())
    assert [g["group_id"] for g in groups] == [0, 1, 2]
    m = groups[0]["members"][0]
    assert m["origins"][0] == "ground_truth" and m["response_ids"][0] == [6, 7, 2]
    assert m["scores"] == [1.0, 0.2, 0.5] and m["ref_logps"] == [-2.0, -3.0, -1.0]
    assert m["rank"] == [0, 2, 1]  # stored order [1, 2, 0] in the new positions
    with pytest.raises(ValueError, match="contrast group 1 is split"):
        pack_groups(_rows().drop(index=2))


def test_max_responses_keeps_the_anchor_and_the_first_others():
    m = pack_groups(_rows(), max_responses=2)[0]["members"][0]
    assert m["origins"] == ["ground_truth", "autoregressive"] and m["scores"] == [1.0, 0.2]
    assert m["ref_logps"] == [-2.0, -3.0] and m["rank"] == [0, 1]  # stored order [1, 2, 0] without the dropped one


def test_a_group_of_samples_alone_is_anchored_on_the_best_of_the_samples_kept():
    rows = _rows().assign(origins=[["autoregressive"] * 3] * 6, scores=[[0.2, 0.5, 1.0]] * 6)
    m = pack_groups(rows)[0]["members"][0]
    assert m["scores"] == [1.0, 0.2, 0.5] and m["response_ids"][0] == [8, 2] and m["ref_logps"][0] == -1.0
    # K = 2 of the same samples: the first two drawn, the better of those first (not the best of all three)
    m = pack_groups(rows, max_responses=2)[0]["members"][0]
    assert m["scores"] == [0.5, 0.2] and m["response_ids"] == [[6, 7, 2], [5, 2]] and m["rank"] == [0, 1]
    # the source's own anchor stays where it is, whatever a reward says of the others
    assert pack_groups(_rows().assign(scores=[[2.0, 1.0, 0.5]] * 6))[0]["members"][0]["origins"][0] == "ground_truth"


def test_columns_that_are_null_throughout_read_as_absent():
    # Ray Data hands a list column holding only nulls to pandas as NA, not None (paired data without scores).
    rows = _rows().assign(scores=pd.NA, rank=pd.NA, ref_logps=None)
    m = pack_groups(rows)[0]["members"][0]
    assert m["scores"] is None and m["rank"] is None and m["ref_logps"] is None
    assert m["origins"][0] == "ground_truth"


def test_collate_lays_out_every_response_once():
    batch = collate(pack_groups(_rows())[:2], pad_id=0, row_tokens=64)
    assert batch.mask.shape == (4, 3) and batch.packed.response_lengths.tolist() == [3, 2, 2] * 4
    # each prompt is packed once with its three responses: 4 x (3 + 7) real tokens, 4 x (3 x 3 + 7) unpacked
    assert int((batch.packed.input_ids != 0).sum()) == 40 and batch.packed.tokens == 64
    per_seq = torch.arange(12, dtype=torch.float32)
    assert sorted(batch.gather(per_seq).flatten().tolist()) == list(range(12))
    assert batch.group_of_prompt.tolist() == [0, 0, 1, 1] and batch.similarity[0].shape == (2, 2)


@pytest.mark.parametrize("loss", ["dpo", "swepo", "rpo", "cpo", "infonca", "nca"])
def test_every_loss_runs_and_a_policy_equal_to_its_reference_scores_half(loss):
    tc = TrainConfig(loss=loss, cpo_ranked=True, cpo_alpha_mle=0.5)
    batch = collate(pack_groups(_rows()), pad_id=0, row_tokens=64)
    policy = batch.ref_logps.clone().requires_grad_(True)
    value, metrics = preference_loss(tc, batch, policy, batch.ref_logps, batch.gather(torch.full((18,), 2.0)))
    value.backward()
    assert torch.isfinite(value) and policy.grad.abs().sum() > 0
    assert metrics["accuracy_correct"] / metrics["accuracy_pairs"] == 0.5
    if loss == "dpo":
        assert value.item() == pytest.approx(math.log(2))


def test_implicit_accuracy_orders_pairs_by_score():
    batch = collate(
        pack_groups(_rows())[:1], pad_id=0, row_tokens=64
    )  # scores per prompt after anchoring: [1.0, 0.2, 0.5]
    rewards = torch.tensor([[3.0, 1.0, 2.0], [0.0, 1.0, 2.0]])
    correct, pairs = implicit_accuracy(rewards, batch)
    assert pairs == 6 and correct == 3 + 1  # first prompt all 3 right; second only 0.5 > 0.2 right


def test_an_accuracy_over_no_ordered_pair_is_nan_not_zero():
    total = dict.fromkeys(SUMMED, 0.0) | {"accuracy_correct": 3.0, "accuracy_pairs": 4.0}
    figures = ratios(total)
    assert figures["accuracy"] == 0.75 and math.isnan(figures["lc_accuracy"])


def test_step_groups_cover_each_epoch_exactly_once():
    train = list(range(0, 40, 2))
    seen = [g for s in range(5) for g in step_groups(train, 4, seed=0, step=s)]
    assert sorted(seen) == train
    assert step_groups(train, 4, 0, 5) != step_groups(train, 4, 0, 0)  # new epoch, new order
    assert step_groups(train, 4, 0, 3) == step_groups(train, 4, 0, 3)
    with pytest.raises(ValueError, match="more than the"):
        step_groups([1, 2], 4, 0, 0)


def test_heldout_split_is_disjoint_and_stable():
    train, held = split_heldout(list(range(50)), 0.1, seed=3)
    assert len(held) == 5 and not set(train) & set(held) and sorted(train + held) == list(range(50))
    assert split_heldout(list(range(50)), 0.1, seed=3) == (train, held)


def test_elastic_batch_must_divide_for_every_world_size(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  num_workers: [1, 3]\n  batch_groups: 8\n  micro_groups: 2\n")
    with pytest.raises(ConfigError, match="fails for 3 workers"):
        load_config(path)


def _batch_with_a_single_response_prompt():
    """Group 0, whose second prompt kept only its ground truth (every negative was a copy of it)."""
    rows = _rows()
    single = rows.index[1]
    rows.at[single, "response_ids"] = [[6, 7, 2]]
    rows.at[single, "origins"] = ["ground_truth"]
    rows.at[single, "scores"] = [1.0]
    rows.at[single, "ref_logps"] = [-2.0]
    rows.at[single, "rank"] = [0]
    return collate(pack_groups(rows)[:1], pad_id=0, row_tokens=64)


@pytest.mark.parametrize("loss", ["dpo", "rpo", "cpo", "swepo"])
def test_prompts_whose_negatives_were_all_dropped_are_skipped_not_contrasted_with_themselves(loss):
    batch = _batch_with_a_single_response_prompt()
    policy = (batch.ref_logps + 0.5 * torch.arange(3.0)).requires_grad_(True)
    value, metrics = preference_loss(
        TrainConfig(loss=loss), batch, policy, batch.ref_logps, batch.gather(torch.full((4,), 2.0))
    )
    value.backward()
    assert metrics["skipped_prompts"] == 1 and torch.isfinite(value)
    assert policy.grad[1].abs().sum() == 0  # the single-response prompt takes no part


def _batch_where_the_anchor_is_not_the_best():
    """Per prompt after packing: anchor (ground truth) scored 0.5, then 0.9 and 0.1; in group 0's first prompt all
    three score the same (no preference to learn)."""
    rows = _rows()
    rows["scores"] = [[0.9, 0.5, 0.1]] * len(rows)
    rows.at[rows.index[0], "scores"] = [0.5, 0.5, 0.5]
    return collate(pack_groups(rows), pad_id=0, row_tokens=64)


def _pair_loss(batch, policy, chosen, rejected, beta=0.1):
    return L.dpo_loss(
        policy[:, chosen], policy[:, rejected], batch.ref_logps[:, chosen], batch.ref_logps[:, rejected], beta=beta
    ).losses


def test_dpo_pairs_by_score_when_scores_exist():
    batch = _batch_where_the_anchor_is_not_the_best()
    policy = batch.ref_logps + torch.tensor([0.3, -0.2, 0.4])
    counts = batch.gather(torch.full((batch.packed.tokens,), 2.0))
    auto, metrics = preference_loss(TrainConfig(loss="dpo"), batch, policy, batch.ref_logps, counts)
    assert metrics["skipped_prompts"] == 1  # the prompt whose responses all score the same
    assert auto.item() == pytest.approx(float(_pair_loss(batch, policy, 1, 2)[1:].mean()))
    anchor, metrics = preference_loss(TrainConfig(loss="dpo", pairing="anchor"), batch, policy, batch.ref_logps, counts)
    lowest_other = torch.cat(
        [_pair_loss(batch, policy, 0, 1)[:1], _pair_loss(batch, policy, 0, 2)[1:]]
    )  # a tie: the first
    assert metrics["skipped_prompts"] == 0 and anchor.item() == pytest.approx(float(lowest_other.mean()))
    each, _ = preference_loss(TrainConfig(loss="dpo", pairing="best_each"), batch, policy, batch.ref_logps, counts)
    per_pair = (_pair_loss(batch, policy, 1, 0) + _pair_loss(batch, policy, 1, 2)) / 2
    assert each.item() == pytest.approx(float(per_pair[1:].mean()))


def test_rpo_pairs_by_score_and_best_each_is_dpo_only(tmp_path):
    batch = _batch_where_the_anchor_is_not_the_best()
    policy = (batch.ref_logps + torch.tensor([0.3, -0.2, 0.4])).requires_grad_(True)
    counts = batch.gather(torch.full((batch.packed.tokens,), 2.0))
    value, metrics = preference_loss(TrainConfig(loss="rpo"), batch, policy, batch.ref_logps, counts)
    value.backward()
    assert metrics["skipped_prompts"] == 1
    assert policy.grad[1:, 0].abs().sum() == 0 and policy.grad[1:, 1:].abs().min() > 0  # anchor out, best and worst in
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  loss: rpo\n  pairing: best_each\n")
    with pytest.raises(ConfigError, match="pairing=best_each .DPO x .k-1.. is for the pairwise losses"):
        load_config(path)


def test_pairing_by_score_on_shards_without_scores_is_refused():
    rows = _rows().assign(scores=None)
    batch = collate(pack_groups(rows), pad_id=0, row_tokens=64)
    counts = batch.gather(torch.full((batch.packed.tokens,), 2.0))
    _, metrics = preference_loss(
        TrainConfig(loss="dpo"), batch, batch.ref_logps, batch.ref_logps, counts
    )  # auto: anchor
    assert metrics["skipped_prompts"] == 0
    with pytest.raises(ValueError, match="pairing=best_worst needs response scores"):
        preference_loss(TrainConfig(loss="dpo", pairing="best_worst"), batch, batch.ref_logps, batch.ref_logps, counts)


def test_cpo_keeps_the_nll_term_for_prompts_without_negatives():
    batch = _batch_with_a_single_response_prompt()
    policy = batch.ref_logps.clone().requires_grad_(True)
    counts = batch.gather(torch.full((4,), 2.0))
    value, metrics = preference_loss(TrainConfig(loss="cpo", cpo_alpha_mle=0.5), batch, policy, batch.ref_logps, counts)
    value.backward()
    assert metrics["skipped_prompts"] == 0
    assert policy.grad[1, 0] == pytest.approx(-0.5 / 2 / 2)  # alpha * d(-logp/n)/dlogp, averaged over 2 prompts


def test_sft_control_is_the_anchor_nll_alone():
    batch = _batch_with_a_single_response_prompt()
    policy = (batch.ref_logps + 0.5 * torch.arange(3.0)).requires_grad_(True)
    counts = batch.gather(torch.full((4,), 2.0))
    value, metrics = preference_loss(TrainConfig(loss="sft"), batch, policy, batch.ref_logps, counts)
    value.backward()
    assert value.item() == pytest.approx(float(-(policy[:, 0].detach() / 2).mean()))
    assert metrics["skipped_prompts"] == 0
    grad = torch.zeros_like(policy)
    grad[:, 0] = -0.5 / 2  # d(-logp/n)/dlogp averaged over 2 prompts; the negatives take no part
    assert torch.equal(policy.grad, grad)


def test_run_identity_ignores_layout_and_cadence_and_names_what_changes_the_math(tmp_path):
    from tests.conftest import ROOT
    from training import run_identity

    base = load_config(ROOT / "configs/tiny.yaml")
    same = load_config(
        ROOT / "configs/tiny.yaml",
        [
            "train.num_workers=1",
            "train.cpus_per_worker=2",
            "train.log_every=1",
            "train.checkpoint_every=1",
            "train.micro_groups=2",
            "train.pack_tokens=64",
        ],
    )
    other = load_config(ROOT / "configs/tiny.yaml", ["train.lr=1e-4", "train.deepspeed.zero_stage=3"])
    ident = run_identity.identity(base, "shards-a")
    assert run_identity.run_name(base, "train", ident) == run_identity.run_name(
        same, "train", run_identity.identity(same, "shards-a")
    )
    assert run_identity.run_name(base, "train", ident) != run_identity.run_name(
        other, "train", run_identity.identity(other, "shards-a")
    )
    assert run_identity.identity(base, "shards-b") != ident
    assert run_identity.record(tmp_path, ident) is None
    assert run_identity.record(tmp_path, run_identity.identity(same, "shards-a")) is None
    note = run_identity.record(tmp_path, run_identity.identity(other, "shards-a"))
    assert "train.lr 0.001 -> 0.0001" in note and "train.deepspeed.zero_stage 2 -> 3" in note and "step 0" in note


@pytest.mark.parametrize("loss", ["dpo", "swepo", "rpo", "cpo", "infonca", "nca"])
def test_mean_rewards_ignore_a_uniform_scaling_of_length_and_sum_rewards_do_not(loss):
    """Doubling every response's summed log-probs (policy and reference) and its token count is what a response
    twice as long, token for token alike, looks like: under ``mean`` no loss may move, under ``sum`` each does."""
    batch = collate(pack_groups(_rows()), pad_id=0, row_tokens=64)
    policy = batch.ref_logps + 0.3 * torch.randn(batch.ref_logps.shape, generator=torch.Generator().manual_seed(0))
    counts = batch.gather(torch.arange(18, dtype=torch.float32) % 5 + 2)
    for normalization in ("mean", "sum"):
        tc = TrainConfig(loss=loss, reward_normalization=normalization)
        once, _ = preference_loss(tc, batch, policy, batch.ref_logps, counts)
        twice, _ = preference_loss(tc, batch, 2 * policy, 2 * batch.ref_logps, 2 * counts)
        if normalization == "mean":
            assert abs(float(twice - once)) < 1e-5
        else:
            assert abs(float(twice - once)) > 1e-3


def test_length_metrics_see_a_reward_that_follows_length():
    batch = collate(pack_groups(_rows()), pad_id=0, row_tokens=64)
    counts = batch.gather(torch.tensor([4.0, 8.0, 12.0] * 6))  # per prompt: 4, 8, 12 tokens
    by_length = counts * 0.1  # reward = 0.1 x length: perfectly correlated
    m = length_metric_sums(by_length, batch, counts)
    assert m["length_corr_sum"] / m["length_corr_prompts"] == pytest.approx(1.0)
    assert m["top_tokens_sum"] / m["top_prompts"] == pytest.approx(12.0)
    assert m["lc_pairs"] == 0  # no two responses of a prompt are within 10% of each other's length
    near = batch.gather(torch.tensor([10.0, 10.5, 30.0] * 6))
    m = length_metric_sums(-near, batch, near)
    assert m["length_corr_sum"] / m["length_corr_prompts"] == pytest.approx(-1.0) and m["lc_pairs"] > 0


def test_training_from_the_directory_it_exports_to_is_refused_before_any_work(tiny_model_dir, tmp_path):
    import shutil

    from tests.conftest import ROOT

    policy = tmp_path / "out" / "train" / "policy"  # "continue from my last policy"
    shutil.copytree(tiny_model_dir, policy)
    cfg = load_config(ROOT / "configs/tiny.yaml", [f"output_dir={tmp_path / 'out'}", f"model.policy_dir={policy}"])
    with pytest.raises(ValueError, match="is where this train job exports its policy"):
        run_train(cfg)
    assert (policy / "config.json").is_file()  # untouched


def test_heldout_batches_are_loaded_one_at_a_time_when_the_evaluation_reaches_them():
    from training.heldout_metrics import heldout_batches

    loaded: list[list[int]] = []

    def load(ids):
        loaded.append(ids)
        return f"batch of {ids}"

    batches = heldout_batches([10, 11, 12, 13, 14], rank=1, world=2, micro_groups=1, load=load)
    assert loaded == []  # nothing read (nor on the device) before the evaluation starts
    assert next(batches) == (True, [11], "batch of [11]") and loaded == [[11]]
    # rank 1 holds 2 of the 5 groups; rank 0 holds 3, so rank 1 scores the first group once more, not counted
    assert list(batches) == [(True, [13], "batch of [13]"), (False, [10], "batch of [10]")]


def test_a_micro_batch_mixing_scored_and_unscored_prompts_is_refused_not_trained_as_unscored():
    rows = _rows()
    rows.at[rows.index[-1], "scores"] = None  # the last group's prompt lost its scores (made before the fix)
    groups = pack_groups(rows)
    assert collate(groups[:1], pad_id=0, row_tokens=64).scores is not None
    with pytest.raises(ValueError, match=r"contrast groups \[2\] hold prompts without scores"):
        collate(groups, pad_id=0, row_tokens=64)


def test_a_scored_source_whose_rows_gain_negatives_is_refused_unless_a_reward_scores_them(tmp_path):
    from orchestration.prepare import reward_mode

    def cfg(reward):
        return load_config(
            ROOT_CONFIG,
            ["data.source=../shared/data/ultrafeedback_binarized_1200.jsonl.gz", f"prepare.reward={reward}"],
        )

    with pytest.raises(ValueError, match="prepare.reward to 'module:function' or 'model:<dir>'"):
        reward_mode(cfg("auto"), has_scores=True, adds_negatives=True)
    assert reward_mode(cfg("auto"), has_scores=True, adds_negatives=False) == "source"
    assert reward_mode(cfg("auto"), has_scores=False, adds_negatives=True) == "none"
    assert reward_mode(cfg("none"), has_scores=True, adds_negatives=True) == "none"  # said explicitly: no scores at all
    assert reward_mode(cfg("model:/rm"), has_scores=True, adds_negatives=True) == "model:/rm"


def test_an_explicit_none_reward_drops_the_scores_of_every_row_alike():
    from pipeline.rewards import drop_scores

    rows = pd.DataFrame({"scores": [[1.0, 0.0], [0.5, 0.2, 0.1]]})
    assert drop_scores(rows)["scores"].tolist() == [[], []]


def test_stages_and_the_trainer_anchor_on_the_same_response_of_a_scored_row():
    from pipeline import stages
    from tests.zoo import tokenizer_like

    # a scored source without ground truth or chosen (AlpacaEval best-of-n): "dataset" responses with scores
    # cells as Ray Data hands them to a pandas batch: numpy arrays
    front = pd.DataFrame(
        {
            "prompt": ["p", "q"],
            "responses": [np.array(["a", "bb", "c"], dtype=object), np.array(["x", "y"], dtype=object)],
            "origins": [np.array(["dataset"] * 3, dtype=object), np.array(["chosen", "rejected"], dtype=object)],
            "scores": [np.array([0.1, 0.9, 0.5]), np.array([0.0, 1.0])],
            "skip_reason": ["", ""],
            "source": "s",
            "row": [1, 2],
        }
    )
    rows = stages.tokenize_records(front, tokenizer_like("chatml"), 64, "error")
    assert list(rows["responses"].iloc[1]) == ["x", "y"]  # a chosen response anchors: nothing moves
    row = rows.iloc[0]
    built_from = stages.anchor_index(row["origins"])  # where meanfield and truncation negatives start
    assert row["responses"][built_from] == "bb"  # the source's best
    # a reward then rescores every response (after negatives were added), and another one is best now
    record = {
        "group_id": 0,
        "group_position": 0,
        "group_size": 1,
        "prompt_ids": [1],
        "origins": list(row["origins"]),
        "response_ids": [list(r) for r in row["response_ids"]],
        "scores": [0.2, 0.3, 0.8],
        "ref_logps": None,
        "rank": None,
        "group_similarity": [1.0],
    }
    member = pack_groups(pd.DataFrame([record]))[0]["members"][0]
    assert member["response_ids"][0] == list(row["response_ids"][built_from])  # contrasted with what it was built from


def test_recorded_step0_reference_makes_a_bf16_policy_tie_with_itself_exactly():
    """The held-out reference is the trainer's own forward at step 0 (the policy is the reference then): a reference
    from another batch layout differs in bf16 by far more than any tie tolerance, so the start was not 0.5."""
    from training.batches import record_reference, with_recorded_reference

    groups = pack_groups(_rows())
    batch = collate(groups, pad_id=0, row_tokens=64)
    ids = [g["group_id"] for g in groups]
    policy = torch.randn(batch.mask.shape).to(torch.bfloat16).float() * batch.mask  # a bf16 model's sums
    shifted = batch.ref_logps if batch.ref_logps is not None else policy + 0.3 * torch.randn_like(policy)
    assert implicit_accuracy(0.1 * (policy - shifted), batch)[0] != 0.5 * implicit_accuracy(policy, batch)[1]
    record: dict = {}
    record_reference(record, ids, batch, policy)
    again = collate(with_recorded_reference(pack_groups(_rows()), record), pad_id=0, row_tokens=64)
    assert torch.equal(again.ref_logps, policy)
    correct, pairs = implicit_accuracy(0.1 * (policy - again.ref_logps), again)
    assert pairs > 0 and correct / pairs == 0.5


def test_training_on_a_reference_of_another_precision_is_refused_naming_both(tmp_path):
    from orchestration.train import check_reference_precision

    cfg = load_config(ROOT_CONFIG, ["train.deepspeed.dtype=bf16"])
    with pytest.raises(
        ValueError, match=r"computed in fp32, but training computes in bf16 \(train.deepspeed.dtype=bf16\)"
    ):
        check_reference_precision(cfg, "fp32", tmp_path)
    check_reference_precision(cfg, "bf16", tmp_path)  # one precision: accepted
    live = load_config(ROOT_CONFIG, ["train.deepspeed.dtype=bf16", "train.reference=live"])
    check_reference_precision(live, "fp32", tmp_path)  # a live reference runs in the trainer's precision
