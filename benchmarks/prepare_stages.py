"""Comparison 4: rows/s of every prepare stage on the demo config and on AlpacaEval best-of-16.

Stage seconds are the actors' compute time (what the prepare report records per stage); the stage with
the fewest rows/s is the bottleneck. The demo runs a random model of the demo's shape as its reference,
so the benchmark does not depend on an SFT run (generation then runs to the token limit more often).
"""
from __future__ import annotations

from pathlib import Path

from benchmarks.common import ensure_model, fresh
from configs.schema import Config, load_config
from pipeline.graph import run_prepare

RUNS = {  # name -> (config, overrides)
    "demo": ("configs/toy_demo.yaml", ["prepare.max_rows=512"]),
    "alpacaeval_bo16": ("configs/alpacaeval_bo16.yaml", ["prepare.max_rows=200"]),
}
SMOKE = ["prepare.max_rows=16"]


def stage_rates(report: dict) -> dict:
    rows = report["rows_out"]
    rates = {stage: {"seconds": s, "rows_per_second": rows / s if s else None}
             for stage, s in report["seconds_per_stage"].items()}
    timed = {k: v for k, v in rates.items() if v["rows_per_second"]}
    return {"rows_out": rows, "wall_seconds": report["wall_seconds"], "stages": rates,
            "bottleneck": min(timed, key=lambda k: timed[k]["rows_per_second"])}


def run(cfg: Config, out: Path, smoke: bool) -> dict:
    results = {}
    for name, (path, overrides) in RUNS.items():
        run_dir = out / f"prepare_{name}"
        sets = [f"output_dir={run_dir}", f"model.policy_dir={run_dir / 'model'}", f"ray.num_cpus={cfg.ray.num_cpus}"]
        rcfg = load_config(path, [*sets, *overrides, *(SMOKE if smoke else [])])
        ensure_model(rcfg)
        fresh(rcfg.job_dir("prepare"))
        results[name] = stage_rates(run_prepare(rcfg))
        print(f"[bench] prepare {name}: bottleneck {results[name]['bottleneck']}", flush=True)
    return results
