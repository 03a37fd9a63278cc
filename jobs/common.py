"""What every job entry point does: parse arguments, load the config, start Ray, write the report."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from configs.schema import Config, ConfigError, load_config


def parse_config(job: str, argv: list[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(prog=f"python -m jobs.{job}")
    parser.add_argument("--config", required=True, help="YAML config file, e.g. configs/demo.yaml")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field, e.g. --set sft.lr=1e-3"
    )
    args = parser.parse_args(argv)
    try:
        return load_config(args.config, args.set)
    except ConfigError as exc:
        print(f"config error:\n{exc}", file=sys.stderr)
        raise SystemExit(2) from None


def init_ray(cfg: Config) -> None:
    """Join the cluster of ``ray job submit`` or ``ray.address``, else start a local one."""
    import ray

    if ray.is_initialized():
        return
    # Ray Train's print patch re-logs every worker print, so each progress line would appear twice.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    # address="local": a new cluster of our own, never a head that happens to run on this machine.
    kwargs = {"address": address} if address else {"address": "local", "num_cpus": cfg.ray.num_cpus, "include_dashboard": False}
    ray.init(log_to_driver=True, **kwargs)
    # Ray Data's progress bars redraw constantly in non-terminal logs; one line per update is enough.
    ray.data.DataContext.get_current().enable_progress_bars = sys.stderr.isatty()


def write_report(cfg: Config, job: str, figures: dict) -> Path:
    """Write ``<output_dir>/<job>/report.json`` with the job's figures."""
    path = cfg.job_dir(job) / "report.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    report = {"job": job, "config": cfg.name, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **figures}
    path.write_text(json.dumps(report, indent=2, sort_keys=True, default=str))
    print(f"[{job}] report: {path}")
    return path
