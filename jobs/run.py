"""The run a new user starts first: reference model (a pretrained one, converted from GGUF once, or the toy, trained
or reused) -> prepare -> train -> evaluate.

``python -m jobs.run --config configs/demo.yaml`` (what ``make run`` runs).
"""

from __future__ import annotations

import sys
import time

from jobs import console, evaluate, prepare, sft, train
from jobs.common import ensure_model, init_ray, parse_config, run_cli, start_line, write_report


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    cfg = parse_config("run", argv)
    started = time.perf_counter()
    ensure_model(cfg)
    init_ray(cfg)
    seconds = {"model and Ray start": time.perf_counter() - started}
    reports = {}
    for name, job in (("sft", sft), ("prepare", prepare), ("train", train), ("evaluate", evaluate)):
        if name == "sft" and cfg.own_model:
            continue
        out = console.active()  # each stage's complete log in its own job directory
        log = f"; full log {out.log_to(cfg.job_dir(name) / 'logs', name)}" if out is not None else ""
        print(f"{start_line(cfg, name)}{log}", flush=True)
        stage_started = time.perf_counter()
        reports[name] = job.main(argv)
        seconds[name] = time.perf_counter() - stage_started
    wall = time.perf_counter() - started
    if console.active() is not None:
        console.active().log_to(cfg.job_dir("run") / "logs", "run")
    print(
        evaluate.comparison_table(reports["evaluate"]), flush=True
    )  # shown by the evaluate stage; the log keeps it here
    console.show(
        f"===== {cfg.name}: reference vs {cfg.train.loss} policy, {wall / 60:.1f} min ("
        + ", ".join(f"{k} {v / 60:.1f}" for k, v in seconds.items())
        + "): the table above ====="
    )
    headline = (
        "reference_exact_match",
        "policy_exact_match",
        "exact_match_diff",
        "exact_match_diff_ci95",
        "win_rate",
        "reference_implicit_accuracy",
        "policy_implicit_accuracy",
    )
    write_report(
        cfg,
        "run",
        {
            "wall_seconds": wall,
            "stage_seconds": seconds,
            "stages": {k: str(cfg.job_dir(k) / "report.json") for k in reports},
            **{k: reports["evaluate"][k] for k in headline if k in reports["evaluate"]},
        },
    )
    return reports


if __name__ == "__main__":
    run_cli("run", main)
