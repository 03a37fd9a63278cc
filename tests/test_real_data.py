"""Prepare on slices of the real public data in ../shared/data (the shipped real-data configs)."""
from __future__ import annotations

import pytest

from pipeline.shards import read_shards
from tests.conftest import SHARED_DATA, run_job

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not present")]
TINY_MODEL = ["model.hidden_size=64", "model.num_layers=2", "model.num_heads=2", "model.intermediate_size=128"]


def test_alpacaeval_scored_groups_get_deviations_and_weights(tiny_run, tmp_path):
    report = run_job("prepare", tmp_path, f"model.policy_dir={tiny_run['dir'] / 'sft' / 'model'}", "prepare.max_rows=40",
                     config="configs/alpacaeval_bo16.yaml")
    assert report["rows_out"] == 40 and report["reward"] == "source"
    for row in read_shards(tmp_path / "prepare" / "shards").to_pylist():
        assert len(row["responses"]) == len(row["scores"]) == len(row["deviation"]) == len(row["log_weight"]) == 11
        assert sum(row["deviation"]) == pytest.approx(0.0, abs=1e-9)
        assert row["log_weight"] == pytest.approx([abs(d) for d in row["deviation"]])


def test_hh_pairs_get_contrast_groups_with_similarity_rows(tiny_run, tmp_path):
    report = run_job("prepare", tmp_path, f"model.policy_dir={tiny_run['dir'] / 'sft' / 'model'}", "prepare.max_rows=40",
                     config="configs/hh_harmless.yaml")
    rows = read_shards(tmp_path / "prepare" / "shards").to_pylist()
    assert report["rows_out"] == len(rows) == 40 and report["groups"] == 10
    for row in rows:
        assert row["origins"] == ["chosen", "rejected"] and len(row["group_similarity"]) == 4
        assert row["group_similarity"][row["group_position"]] == pytest.approx(1.0, abs=1e-4)


def test_alpaca_ground_truth_gets_negatives_from_the_reference(tmp_path):
    run_job("sft", tmp_path, *TINY_MODEL, "sft.steps=10", config="configs/alpaca_sft.yaml")
    report = run_job("prepare", tmp_path, *TINY_MODEL, "sft.steps=10", "prepare.max_rows=24",
                     "prepare.negatives.max_tokens=32", config="configs/alpaca_sft.yaml")
    assert report["rows_in"] == 24  # prepare.max_rows: the first 24 rows are read, no more
    assert report["rows_out"] + report["skipped"].get("over_length", 0) == 24
    assert {"autoregressive", "meanfield", "truncation"} <= set(report["negatives_by_type"])
    for row in read_shards(tmp_path / "prepare" / "shards").to_pylist():
        assert row["origins"][0] == "ground_truth" and row["rank"][0] == 0 and len(row["ref_logps"]) == len(row["responses"])
