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
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--smoke", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    report = json.loads((tmp_path / "report.json").read_text())
    train = report["train_vs_trl"]
    assert train["project"]["timed_steps"] == train["trl"]["timed_steps"] > 0
    assert train["train_vs_trl_ratio"] == pytest.approx(train["project"]["samples_per_second"] / train["trl"]["samples_per_second"])
    assert train["project"]["peak_rss_mb"] > 0 and train["trl"]["peak_rss_mb"] > 0
    k = report["k_cost"]
    assert set(k["per_k"]) == {"2", "4", "8", "11"} and k["per_k"]["2"]["cost_vs_k2"] == 1.0
    assert k["k11_vs_k2_cost_ratio"] == pytest.approx(k["per_k"]["11"]["cost_vs_k2"])
    gen = report["generate_vs_hf"]
    assert gen["project_vllm"]["generated_tokens"] > 0 and gen["hf_generate"]["generated_tokens"] > 0
    assert gen["generate_vs_hf_ratio"] > 0 and 0 < gen["sampling_limit_fraction"] < 1
    memory = report["train_memory"]
    assert memory["per_scale"]["8"]["rows"] == 8 * memory["per_scale"]["1"]["rows"]
    assert memory["train_worker_rss_ratio"] == pytest.approx(
        memory["per_scale"]["8"]["worker_peak_rss_mb"] / memory["per_scale"]["1"]["worker_peak_rss_mb"])
    assert memory["whole_dataset"]["8"]["rows"] == memory["per_scale"]["8"]["rows"]
    assert memory["tokens_per_second_vs_whole_dataset"] == pytest.approx(
        memory["per_scale"]["1"]["tokens_per_second"] / memory["whole_dataset"]["1"]["tokens_per_second"])
    for name in ("demo", "alpacaeval_bo16"):
        stages = report["prepare_stages"][name]
        assert stages["bottleneck"] in stages["stages"]
    scale = report["prepare_scale"]
    assert [int(n) for n in scale["per_size"]] == [200, 400, 800]
    assert all(s["rows_out"] == s["rows"] and s["driver_peak_rss_mb"] > 0 for s in scale["per_size"].values())
    assert scale["prepare_driver_rss_ratio"] == pytest.approx(
        scale["per_size"]["800"]["driver_peak_rss_mb"] / scale["per_size"]["200"]["driver_peak_rss_mb"])
    quality = report["grouping_quality"]
    assert 0 < quality["worst_of_exact"] <= quality["demo"]["bucketed_4096"]["of_exact"] + 1e-9
    assert "length_study" not in report  # opt-in: python -m benchmarks --only length_study
    printed = table(report)
    assert "train_vs_trl_ratio" in printed and "k11_vs_k2_cost_ratio" in printed and "generate_vs_hf_ratio" in printed
    assert "train_worker_rss_ratio" in printed and "prepare_driver_rss_ratio" in printed
