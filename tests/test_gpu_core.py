"""The GPU core script runs where only torch, transformers and pydantic are: its --smoke on the CPU, with Ray,
vLLM and DeepSpeed made unimportable."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT

WITHOUT = ("ray", "vllm", "deepspeed", "sentence_transformers")


def test_gpu_core_smoke_runs_without_ray_vllm_or_deepspeed(tmp_path):
    out = tmp_path / "gpu_core.json"
    blocked = "; ".join(f"sys.modules[{m!r}] = None" for m in WITHOUT)
    code = (
        f"import runpy, sys; {blocked}; sys.argv = ['gpu_core', '--smoke', '--out', {str(out)!r}]; "
        "runpy.run_module('benchmarks.gpu_core', run_name='__main__')"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["conformance"] and all(r["exact"] for r in report["conformance"])
    assert {r["dtype"] for r in report["conformance"]} == {"fp32", "bf16"}
    assert all(r["sdpa_kernels"] for r in report["conformance"] if r["attention"] == "sdpa" and r["dtype"] == "bf16")
    for per_k in report["step"].values():
        assert set(per_k) == {"2", "4", "8"}
        assert all(
            s["project"]["tokens_per_second"] > 0 and s["padded"]["tokens_per_second"] > 0 for s in per_k.values()
        )
    for p in report["precision"].values():
        assert p["step0_accuracy_own_forward"] == 0.5 and p["bf16_vs_fp32_max_abs"] > 0
    assert "| architecture | attention | dtype |" in proc.stdout
