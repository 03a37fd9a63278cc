"""A real Ray head, a job submitted with `ray job submit --working-dir .`, and its artifacts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow
DASHBOARD_PORT = 8299


def test_ray_job_submit_runs_sft_on_a_ray_head(tmp_path, monkeypatch):
    ray_cli = str(Path(sys.executable).parent / "ray")
    # A throwaway head on loopback: no token authentication, for the CLI and this process's client alike.
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    # The job's `python` is looked up on the head's PATH, as with an activated virtualenv.
    env = {
        **os.environ,
        "RAY_ADDRESS": "",
        "RAY_AUTH_MODE": "disabled",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    # --block ties the head's processes to this one, so stopping it stops only this cluster.
    head = subprocess.Popen(
        [
            ray_cli,
            "start",
            "--head",
            "--block",
            "--port=6399",
            f"--dashboard-port={DASHBOARD_PORT}",
            "--include-dashboard=true",
            "--num-cpus=4",
            "--disable-usage-stats",
            # ports of its own, so a Ray instance already on this machine cannot block its job agent
            "--dashboard-agent-listen-port=52399",
            "--dashboard-agent-grpc-port=52398",
            "--runtime-env-agent-port=52397",
            "--metrics-export-port=52396",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    address = f"http://127.0.0.1:{DASHBOARD_PORT}"
    try:
        from ray.job_submission import JobStatus, JobSubmissionClient

        deadline = time.time() + 120
        while True:
            try:
                client = JobSubmissionClient(address)
                client.list_jobs()
                break
            except Exception:
                if time.time() > deadline or head.poll() is not None:
                    raise
                time.sleep(2)
        out = tmp_path / "run"
        for _ in range(10):  # the head's job agent comes up a little after its dashboard
            submit = subprocess.run(
                [
                    ray_cli,
                    "job",
                    "submit",
                    "--address",
                    address,
                    "--working-dir",
                    ".",
                    "--",
                    "python",
                    "-m",
                    "jobs.sft",
                    "--config",
                    "configs/tiny.yaml",
                    "--set",
                    f"output_dir={out}",
                    "--set",
                    "sft.steps=10",
                ],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=900,
                env=env,
            )
            if "No available agent" not in submit.stdout + submit.stderr:
                break
            time.sleep(3)
        assert submit.returncode == 0, submit.stdout[-4000:] + submit.stderr[-4000:]
        job = next(j for j in client.list_jobs() if "jobs.sft" in j.entrypoint)
        assert client.get_job_status(job.submission_id) == JobStatus.SUCCEEDED
        report = json.loads((out / "sft" / "report.json").read_text())
        assert report["steps"] == 10 and (out / "sft" / "model" / "config.json").is_file()
        assert "held-out exact match" in client.get_job_logs(job.submission_id)
    finally:
        head.terminate()
        head.wait(timeout=60)
        shutil.rmtree(tmp_path / "run" / "ray", ignore_errors=True)
