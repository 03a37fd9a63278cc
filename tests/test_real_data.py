"""Prepare on slices of the real public data in ../shared/data (the shipped real-data configs)."""

from __future__ import annotations

import pytest

from pipeline.shards import read_shards
from tests.conftest import SHARED_DATA, run_job

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not present")]
TINY_MODEL = ["model.hidden_size=64", "model.num_layers=2", "model.num_heads=2", "model.intermediate_size=128"]


def test_alpacaeval_scored_groups_get_deviations_and_weights(tiny_run, tmp_path):
    report = run_job(
        "prepare",
        tmp_path,
        f"model.policy_dir={tiny_run['dir'] / 'sft' / 'model'}",
        "prepare.max_rows=40",
        config="configs/alpacaeval_bo16.yaml",
    )
    assert report["rows_out"] == 40 and report["reward"] == "source"
    for row in read_shards(tmp_path / "prepare" / "shards").to_pylist():
        assert len(row["responses"]) == len(row["scores"]) == len(row["deviation"]) == len(row["log_weight"]) == 11
        assert sum(row["deviation"]) == pytest.approx(0.0, abs=1e-9)
        assert row["log_weight"] == pytest.approx([abs(d) for d in row["deviation"]])


def test_hh_pairs_get_contrast_groups_with_similarity_rows(tiny_run, tmp_path):
    report = run_job(
        "prepare",
        tmp_path,
        f"model.policy_dir={tiny_run['dir'] / 'sft' / 'model'}",
        "prepare.max_rows=40",
        config="configs/hh_harmless.yaml",
    )
    rows = read_shards(tmp_path / "prepare" / "shards").to_pylist()
    # The tiny model's byte tokenizer makes 10 of the first 40 prompts longer than max_length on their own.
    assert report["rows_out"] == len(rows) == 40 - report["skipped"]["prompt_over_length"] == 30
    assert report["groups"] == 8 and report["mean_within_group_similarity"] > 0.2
    for row in rows:
        assert row["origins"] == ["chosen", "rejected"] and len(row["group_similarity"]) == row["group_size"]
        assert row["group_similarity"][row["group_position"]] == pytest.approx(1.0, abs=1e-4)


def test_alpaca_ground_truth_gets_negatives_from_the_reference(tmp_path):
    run_job("sft", tmp_path, *TINY_MODEL, "sft.steps=10", config="configs/alpaca_sft.yaml")
    report = run_job(
        "prepare",
        tmp_path,
        *TINY_MODEL,
        "sft.steps=10",
        "prepare.max_rows=24",
        "prepare.negatives.max_tokens=32",
        config="configs/alpaca_sft.yaml",
    )
    assert report["rows_in"] == 24  # prepare.max_rows: the first 24 rows are read, no more
    assert report["rows_out"] + report["skipped"].get("over_length", 0) == 24
    assert {"autoregressive", "meanfield", "truncation"} <= set(report["negatives_by_type"])
    for row in read_shards(tmp_path / "prepare" / "shards").to_pylist():
        assert (
            row["origins"][0] == "ground_truth"
            and row["rank"][0] == 0
            and len(row["ref_logps"]) == len(row["responses"])
        )


def test_a_bad_row_stops_prepare_with_the_readers_error(tiny_run, tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT

    sets = [
        f"output_dir={tmp_path}",
        f"model.policy_dir={tiny_run['dir'] / 'sft' / 'model'}",
        "prepare.max_rows=null",
        f"data.source={SHARED_DATA / 'ultrafeedback_binarized_1200.jsonl.gz'}",
        "data.on_bad_row=error",
    ]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.prepare",
            "--config",
            "configs/tiny.yaml",
            *[a for s in sets for a in ("--set", s)],
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode != 0
    raised = [line for line in proc.stderr.splitlines() if line.startswith("[prepare] failed: SourceError: ")]
    assert raised and "ultrafeedback_binarized_1200.jsonl.gz row 479, field 'rejected': response is empty" in raised[-1]
