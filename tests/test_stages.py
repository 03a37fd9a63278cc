"""Prepare-job stages alone (no cluster): negatives, groups, SWEPO statistics, ranks, shards."""

from __future__ import annotations

import json
import random

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from actors.reference import MeanfieldNegatives, ReferenceLogps
from pipeline import negatives, rewards, stages
from pipeline.records import SCHEMA_VERSION
from pipeline.shards import Manifest, read_shards
from pipeline.tokenize import encode_response
from training.losses import swepo_deviations


def test_meanfield_changes_only_chosen_positions_and_their_count():
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(10, 31)  # 20 response tokens + EOS
    logits = torch.zeros(21, 50)
    logits[:, 3] = 20.0  # the model is sure of token 3 everywhere
    new, positions = negatives.meanfield_resample(y, logits, 0.15, gen)
    assert len(positions) == round(0.15 * 20) == 3
    changed = (new != y).nonzero().flatten()
    assert set(changed.tolist()) <= set(positions.tolist())
    assert (new[positions] == 3).all()
    assert new[-1] == y[-1]  # EOS is kept


def test_meanfield_samples_follow_the_model_distribution():
    gen = torch.Generator().manual_seed(1)
    y = torch.full((41,), 7)
    probs = torch.tensor([0.6, 0.3, 0.1])
    logits = torch.full((41, 3), -1e9)
    logits[:, :3] = probs.log()
    counts = torch.zeros(3)
    for _ in range(500):
        new, positions = negatives.meanfield_resample(y, logits, 0.25, gen)
        counts += torch.bincount(new[positions], minlength=3)[:3].float()
    freq = counts / counts.sum()
    assert torch.allclose(freq, probs, atol=0.03), freq


def _fixed_distribution_model(path, tokenizer, target: dict[int, float]):
    """A Llama whose next-token distribution is ``target`` whatever the context (residual stream = one constant
    vector)."""
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for p in model.model.layers.parameters():
            p.zero_()
        model.model.embed_tokens.weight.fill_(1.0)
        model.model.norm.weight.fill_(1.0)
        logits = torch.full((len(tokenizer),), -30.0)
        for tok, prob in target.items():
            logits[tok] = float(np.log(prob))
        model.lm_head.weight.copy_(logits[:, None].expand(-1, 64) / 64)  # norm(ones) = ones, so logits = row sums
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def _batch(tokenizer, prompts, responses, origins=None):
    rows = pd.DataFrame(
        {
            "id": [f"r{i}" for i in range(len(prompts))],
            "prompt": prompts,
            "responses": [[r] for r in responses],
            "origins": origins or [["ground_truth"] for _ in prompts],
            "scores": [[] for _ in prompts],
            "source": "test",
            "row": range(1, len(prompts) + 1),
        }
    )
    return stages.tokenize_records(rows, tokenizer, max_length=256, on_overlength="skip")


def test_meanfield_actor_resamples_from_the_reference_model(tiny_model_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    a, b = tokenizer.convert_tokens_to_ids(["Q", "Z"])
    _fixed_distribution_model(tmp_path, tokenizer, {a: 0.75, b: 0.25})
    actor = MeanfieldNegatives(str(tmp_path), n=40, fraction=0.5, seed=0)
    batch = _batch(tokenizer, ["Say abcdefghij again.\nAnswer: "], ["abcdefghij"])
    out = actor(batch)
    truth = out["response_ids"].iloc[0][0]
    negs = out["response_ids"].iloc[0][1:]
    assert list(out["origins"].iloc[0]) == ["ground_truth"] + ["meanfield"] * 40
    resampled = []
    for neg in negs:
        assert len(neg) == len(truth) and neg[-1] == tokenizer.eos_token_id
        diff = [j for j in range(len(truth)) if neg[j] != truth[j]]
        assert len(diff) == 5  # round(0.5 * 10); Q and Z never occur in the truth, so every draw differs
        resampled += [neg[j] for j in diff]
    share_a = resampled.count(a) / len(resampled)
    assert set(resampled) == {a, b} and abs(share_a - 0.75) < 0.08
    # same seed, same row -> same negatives, whatever else is in the batch
    again = MeanfieldNegatives(str(tmp_path), n=40, fraction=0.5, seed=0)(batch)
    assert [list(x) for x in again["response_ids"].iloc[0]] == [list(x) for x in out["response_ids"].iloc[0]]


def test_reference_logps_equal_a_direct_transformers_computation(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    batch = _batch(tokenizer, ["Add 1 and 2.\nAnswer: ", "Sort the digits: 3 1\nAnswer: "], ["3", "1 3"])
    out = ReferenceLogps(str(tiny_model_dir), row_tokens=64)(batch)
    model = LlamaForCausalLM.from_pretrained(tiny_model_dir).eval()
    for i in range(2):
        p, r = list(batch["prompt_ids"].iloc[i]), list(batch["response_ids"].iloc[i][0])
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([p + r])).logits[0], -1)
        direct = sum(logp[len(p) - 1 + t, r[t]].item() for t in range(len(r)))
        assert out["ref_logps"].iloc[i][0] == pytest.approx(direct, abs=1e-4)


def test_truncation_cuts_and_appends_eos():
    rng = random.Random(0)
    negs = negatives.truncation_negatives([5, 6, 7, 8, 2], 20, eos_id=2, rng=rng)
    assert len(negs) == 20
    for n in negs:
        assert n[-1] == 2 and 2 <= len(n) <= 4 and n[:-1] == [5, 6, 7, 8][: len(n) - 1]
    assert negatives.truncation_negatives([5, 2], 3, 2, rng) == []


def test_over_length_rows_are_marked_or_fail(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = pd.DataFrame(
        {
            "id": ["a", "b"],
            "prompt": ["short", "x" * 100],
            "responses": [["ok"], ["ok"]],
            "origins": [["ground_truth"]] * 2,
            "scores": [[], []],
            "source": "f.jsonl",
            "row": [1, 2],
        }
    )
    out = stages.tokenize_records(rows, tokenizer, max_length=50, on_overlength="skip")
    assert list(out["skip_reason"]) == ["", "over_length"]
    with pytest.raises(ValueError, match="f.jsonl row 2, field 'responses'"):
        stages.tokenize_records(rows, tokenizer, max_length=50, on_overlength="error")


def test_truncate_keeps_the_start_like_trl_and_skips_prompts_that_fill_the_context(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = pd.DataFrame(
        {
            "id": ["a", "b"],
            "prompt": ["p" * 20, "x" * 60],
            "responses": [["r" * 40, "ok"], ["ok", "no"]],
            "origins": [["chosen", "rejected"]] * 2,
            "scores": [[], []],
            "source": "f.jsonl",
            "row": [1, 2],
        }
    )
    out = stages.tokenize_records(rows, tokenizer, max_length=50, on_overlength="truncate")
    assert list(out["skip_reason"]) == ["", "prompt_over_length"]
    prompt, (long, short) = out["prompt_ids"].iloc[0], out["response_ids"].iloc[0]
    full = encode_response(tokenizer, "r" * 40)
    assert len(prompt) + len(long) == 50 and long == full[: 50 - len(prompt)]  # keep_start: the EOS is cut off
    assert short == encode_response(tokenizer, "ok") and out["truncated"].iloc[0] == 1


def test_stored_swepo_columns_are_the_losses_formula_and_cosine_rank():
    batch = pd.DataFrame(
        {
            "scores": [[8, 6, 6.5, 3], [1.0, 1.0 + 1e-9]],
            "origins": [["dataset"] * 4, ["dataset"] * 2],
            "skip_reason": ["", ""],
        }
    )
    out = rewards.group_statistics(batch)
    assert out["deviation"].iloc[0] == pytest.approx([2.125, 0.125, 0.625, -2.875])
    assert out["log_weight"].iloc[0] == pytest.approx([2.125, 0.125, 0.625, 2.875])
    # the same function the loss uses: scores equal within its tie tolerance have no positive
    _, positive = swepo_deviations(
        torch.tensor([[1.0, 1.0 + 1e-9]], dtype=torch.float64), torch.ones(1, 2, dtype=torch.bool)
    )
    assert not positive.any()
    emb = np.array([[1, 0], [0, 1], [0.9, 0.1], [0.5, 0.5]], dtype=float)
    assert rewards.cosine_rank(emb, anchor=0) == [0, 2, 3, 1]


def test_equal_scores_stay_for_the_losses_that_can_use_them():
    batch = pd.DataFrame(
        {"scores": [[1.0, 1.0], [2.0, 1.0]], "origins": [["chosen", "rejected"]] * 2, "skip_reason": ["", ""]}
    )
    out = rewards.group_statistics(batch)
    assert list(out["skip_reason"]) == ["", ""]  # SWEPO skips and counts them at training time
    assert out["deviation"].iloc[0] == pytest.approx([0.0, 0.0])
    assert out["deviation"].iloc[1] == pytest.approx([0.5, -0.5])


def test_negatives_identical_to_the_anchor_are_dropped_and_counted(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    batch = _batch(tokenizer, ["Say abc again.\nAnswer: "], ["abc"])
    truth = list(batch["response_ids"].iloc[0][0])
    out = negatives.append_negatives(batch, [[truth, truth[1:]]], "autoregressive", tokenizer)
    assert list(out["origins"].iloc[0]) == ["ground_truth", "autoregressive"]
    assert out["duplicate_negatives"].iloc[0] == 1 and out["responses"].iloc[0][1] == "bc"


def test_self_samples_keep_a_copy_of_the_truth_and_lose_the_truth_once_scored(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    batch = _batch(tokenizer, ["Say abc again.\nAnswer: ", "Say de.\nAnswer: "], ["abc", "de"])
    batch["skip_reason"] = ["", "prompt_over_length"]
    truth = list(batch["response_ids"].iloc[0][0])
    out = negatives.append_negatives(
        batch, [[truth[1:], truth], []], "autoregressive", tokenizer, drop_anchor_copies=False
    )
    assert (
        out["duplicate_negatives"].iloc[0] == 0
        and list(out["origins"].iloc[0]) == ["ground_truth"] + ["autoregressive"] * 2
    )
    out = rewards.score_responses(out, lambda prompt, response: float(response == "abc"))
    out["truncated"] = [1, 1]
    out = negatives.without_ground_truth(out)
    first, skipped = out.iloc[0], out.iloc[1]
    # the samples alone, in the order drawn, each with its own score and tokens
    assert list(first["origins"]) == ["autoregressive"] * 2 and list(first["responses"]) == ["bc", "abc"]
    assert list(first["scores"]) == [0.0, 1.0] and [list(r) for r in first["response_ids"]] == [truth[1:], truth]
    assert first["truncated"] == 0
    # a row skipped before the stages is left as it was
    assert list(skipped["origins"]) == ["ground_truth"] and skipped["truncated"] == 1


def test_programmatic_scorers_load_by_name():
    assert rewards.load_scorer("task")("Add 1 and 2.\nAnswer: ", "3") == 1.0
    assert rewards.load_scorer("pipeline.task:reward") is rewards.load_scorer("task")
    with pytest.raises(ValueError, match="cannot import"):
        rewards.load_scorer("no_such_module:f")


def test_manifest_resumes_only_verified_shards(tmp_path):
    rows = pd.DataFrame(
        {
            "id": ["a", "b"],
            "prompt": ["p", "q"],
            "responses": [["x", "y"], ["z", "w"]],
            "origins": [["chosen", "rejected"]] * 2,
            "scores": [[1.0, 0.0], []],
            "source": "s",
            "row": [1, 2],
            "group_id": [0, 1],
            "group_position": [0, 0],
            "group_size": [1, 1],
            "group_similarity": [[1.0], [1.0]],
        }
    )
    m, notes = Manifest.open(tmp_path, "h1")
    m.total_shards = 2
    m.add("00000", rows.iloc[:1], {"rows_in": 1})
    m2, notes = Manifest.open(tmp_path, "h1")
    assert list(m2.shards) == ["shard-00000.parquet"] and not notes
    (tmp_path / "shard-00000.parquet").write_bytes(b"corrupt")
    m3, notes = Manifest.open(tmp_path, "h1")
    assert not m3.shards and "checksum mismatch" in notes[0]
    m3.total_shards = 2
    m3.add("00000", rows.iloc[:1], {})
    m3.add("00001", rows.iloc[1:], {})
    table = read_shards(tmp_path)
    assert table.column("id").to_pylist() == ["a", "b"]
    assert table.column("scores").to_pylist() == [[1.0, 0.0], None]
    _, notes = Manifest.open(tmp_path, "other-settings")
    assert "rebuilding" in notes[0] and not (tmp_path / "shard-00000.parquet").exists()


def test_a_rebuild_deletes_only_the_shard_files_the_manifest_names(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    keep = {tmp_path / "policy.safetensors": b"weights", shards / "notes.txt": b"mine"}
    for path, data in keep.items():
        path.write_bytes(data)
    (shards / "shard-00000.parquet").write_bytes(b"old shard")
    # a manifest edited by hand (or written by another tool) listing files that are not shards
    listed = {
        "shard-00000.parquet": {"sha256": "x"},
        "../policy.safetensors": {"sha256": "x"},
        "notes.txt": {"sha256": "x"},
    }
    (shards / "manifest.json").write_text(
        json.dumps({"schema_version": SCHEMA_VERSION, "config_hash": "old", "shards": listed})
    )
    _, notes = Manifest.open(shards, "new-settings")
    assert "rebuilding" in notes[0] and not (shards / "shard-00000.parquet").exists()
    assert all(path.read_bytes() == data for path, data in keep.items())


def test_reward_model_actor_scores_every_response(tiny_model_dir, tmp_path):
    from transformers import LlamaForSequenceClassification

    from actors.reward_model import RewardModelScores

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForSequenceClassification(cfg).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    batch = _batch(tokenizer, ["Add 1 and 2.\nAnswer: ", "Say ab again.\nAnswer: "], ["3", "ab"])
    batch = negatives.append_negatives(batch, [[[5, 2]], [[6, 7, 2]]], "autoregressive", tokenizer)
    out = RewardModelScores(str(tmp_path))(batch)
    scores = [list(s) for s in out["scores"]]
    assert [len(s) for s in scores] == [2, 2] and all(np.isfinite(v) for s in scores for v in s)
    model = LlamaForSequenceClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        direct = model(**tokenizer(["Add 1 and 2.\nAnswer: 3"], return_tensors="pt")).logits[0, 0].item()
    assert scores[0][0] == pytest.approx(direct, abs=1e-4)
