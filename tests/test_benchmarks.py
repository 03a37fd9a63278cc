"""The benchmark harness at toy size (``python -m benchmarks --smoke``): every comparison runs both
sides for real and the report holds each side's figures and the ratios. It measures nothing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmarks.report import table
from tests.conftest import ROOT, SHARED_DATA

pytestmark = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not present")


def test_smoke_run_reports_both_sides_and_every_ratio(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    report = json.loads((tmp_path / "report.json").read_text())
    train = report["train_vs_trl"]
    assert train["project"]["timed_steps"] == train["trl"]["timed_steps"] > 0
    assert train["train_vs_trl_ratio"] == pytest.approx(
        train["project"]["samples_per_second"] / train["trl"]["samples_per_second"]
    )
    assert train["project"]["peak_rss_mb"] > 0 and train["trl"]["peak_rss_mb"] > 0
    assert train["trl"]["bf16"] and train["trl"]["lora_rank"] == 16  # the same precision and adapters on both sides
    assert set(train["precision"]) == {"lora_bf16", "lora_fp32", "full_bf16", "full_fp32"}
    # a shared prompt is computed once: fewer computed than unpacked tokens, and the limit counts the computed ones
    for r in train["precision"].values():
        assert 0 < r["computed_tokens_per_second"] <= r["tokens_per_second"]
        assert r["limit_fraction"] == pytest.approx(r["computed_tokens_per_second"] / r["limit_tokens_per_second"])
    assert train["precision"]["full_bf16"]["limit_tokens_per_second"] == pytest.approx(
        train["precision"]["lora_bf16"]["limit_tokens_per_second"] * 4 / 6
    )
    k = report["k_cost"]
    assert set(k["per_k"]) == {"2", "4", "8", "11"} and k["per_k"]["2"]["cost_vs_k2"] == 1.0
    assert k["k11_vs_k2_cost_ratio"] == pytest.approx(k["per_k"]["11"]["cost_vs_k2"])
    gen = report["generate_vs_hf"]
    assert gen["project_vllm"]["generated_tokens"] > 0 and gen["hf_generate"]["generated_tokens"] > 0
    assert gen["generate_vs_hf_ratio"] > 0 and 0 < gen["sampling_limit_fraction"] < 1
    stages = report["stages"]
    assert set(stages["stages"]) == {"sampling", "meanfield", "reference", "embeddings"}
    for per_dtype in stages["stages"].values():
        assert set(per_dtype) == {"fp32", "bf16"} and all(
            r["tokens"] > 0 and r["limit_fraction"] > 0 for r in per_dtype.values()
        )
    # the same rows in both precisions: bf16 log-probs differ from fp32's, by a bounded amount
    diff = stages["bf16_vs_fp32"]["reference"]
    assert diff["values"] > 0 and 0 < diff["mean_abs"] <= diff["max_abs"]
    assert stages["stages"]["embeddings"]["bf16"]["parameters"] != stages["parameters"]  # the embedder's own size
    quality = report["grouping_quality"]
    assert 0 < quality["worst_of_exact"] <= quality["demo"]["bucketed_4096"]["of_exact"] + 1e-9
    assert not {"length_study", "prepare_scale", "train_memory"} & set(
        report
    )  # opt-in: python -m benchmarks --only NAME
    printed = table(report)
    assert "train_vs_trl_ratio" in printed and "k11_vs_k2_cost_ratio" in printed and "generate_vs_hf_ratio" in printed
    assert "reference_limit_fraction" in printed and "train_limit_fraction" in printed


def test_smoke_run_of_the_opt_in_scaling_comparisons(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--smoke",
            "--only",
            "train_memory",
            "prepare_scale",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    report = json.loads((tmp_path / "report.json").read_text())
    memory = report["train_memory"]
    assert memory["per_scale"]["8"]["rows"] == 8 * memory["per_scale"]["1"]["rows"]
    assert memory["train_worker_rss_ratio"] == pytest.approx(
        memory["per_scale"]["8"]["worker_peak_rss_mb"] / memory["per_scale"]["1"]["worker_peak_rss_mb"]
    )
    assert memory["whole_dataset"]["8"]["rows"] == memory["per_scale"]["8"]["rows"]
    assert memory["tokens_per_second_vs_whole_dataset"] == pytest.approx(
        memory["per_scale"]["1"]["tokens_per_second"] / memory["whole_dataset"]["1"]["tokens_per_second"]
    )
    scale = report["prepare_scale"]
    assert [int(n) for n in scale["per_size"]] == [200, 400, 800]
    assert all(s["rows_out"] == s["rows"] and s["driver_peak_rss_mb"] > 0 for s in scale["per_size"].values())
    assert scale["prepare_driver_rss_ratio"] == pytest.approx(
        scale["per_size"]["800"]["driver_peak_rss_mb"] / scale["per_size"]["200"]["driver_peak_rss_mb"]
    )
    printed = table(report)
    assert "train_worker_rss_ratio" in printed and "prepare_driver_rss_ratio" in printed
