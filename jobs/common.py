"""What every job entry point does: parse arguments, load the config, open the console, start Ray, write the report."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from functools import partial
from pathlib import Path

import ray

from configs.base import ConfigError, is_uri
from configs.schema import Config, load_config
from jobs import console
from pipeline import storage
from training.pretrained import materialize_policy

_models_shown: set[str] = set()
_stores_checked: set[str] = set()
# The jobs whose directories a job's end copies into output_dir: its own, and for `run` every stage's.
STAGES = ("sft", "prepare", "train", "evaluate")


def parse_config(job: str, argv: list[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(prog=f"python -m jobs.{job}")
    parser.add_argument("--config", required=True, help="YAML config file, e.g. configs/demo.yaml")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set sft.lr=1e-3",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="show library logs (vLLM, Ray, transformers) on the console too"
    )
    args = parser.parse_args(argv)
    try:
        return load_config(args.config, args.set)
    except ConfigError as exc:
        print(f"config error:\n{exc}", file=sys.stderr)
        raise SystemExit(2) from None


def check_storage(cfg: Config) -> None:
    """Before any work: ``output_dir`` and ``ray.storage_path``, where they are object stores, exist and may be written
    with the credentials at hand (:func:`pipeline.storage.check_writable` names the URI otherwise)."""
    for location in (cfg.output_dir, cfg.ray.storage_path):
        if location and is_uri(location) and location not in _stores_checked:
            storage.check_writable(storage.at(location, cfg.storage), cfg.storage)
            _stores_checked.add(location)


def ensure_model(cfg: Config) -> None:
    """Check the storage (:func:`check_storage`); convert ``model.gguf_file`` into its cached directory (once; re-runs
    reuse it), or fetch the toy model of an earlier jobs.sft from an object-store ``output_dir`` when this machine has
    no copy; and say, once per process, which model the run starts from, where it came from and its checksum."""
    check_storage(cfg)
    if not cfg.own_model:
        (storage.job_store(cfg, "sft") / "model").pull(cfg.job_dir("sft") / "model")
    started = time.perf_counter()
    record = materialize_policy(cfg)
    if record is None or record["directory"] in _models_shown:
        return
    _models_shown.add(record["directory"])
    how = f"converted in {time.perf_counter() - started:.0f} s" if record["converted_now"] else "converted earlier"
    print(
        f"[model] {cfg.model.gguf_file}: {record['architecture']}, {record['parameters'] / 1e6:.1f}M parameters, from "
        f"{record['origin']}, sha256 {record['sha256']}; {how}: {record['directory']}",
        flush=True,
    )


def init_ray(cfg: Config) -> None:
    """Join the cluster of ``ray job submit`` or ``ray.address``, else start a local one."""
    if ray.is_initialized():
        return
    # Ray Train's print patch re-logs every worker print, so each progress line would appear twice.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    # address="local": a new cluster of our own, never a head that happens to run on this machine.
    kwargs = (
        {"address": address}
        if address
        else {"address": "local", "num_cpus": cfg.ray.num_cpus, "include_dashboard": False}
    )
    ray.init(log_to_driver=True, **kwargs)
    # Under the console, Ray Data logs its progress every 30 s and the console condenses it to one line; elsewhere
    # its bars redraw constantly in non-terminal logs.
    ray.data.DataContext.get_current().enable_progress_bars = console.active() is not None or sys.stderr.isatty()


def start_line(cfg: Config, job: str) -> str:
    """One line with the settings a user checks first."""
    model = cfg.model.gguf_file or cfg.model.policy_dir or "the toy model"
    parts = {
        "sft": f"toy reference model: {cfg.sft.steps} steps, lr {cfg.sft.lr:g}, {cfg.sft.num_workers} workers",
        "prepare": f"source {cfg.data.source or 'embedded task'}, negatives "
        + ", ".join(
            f"{k} {getattr(cfg.prepare.negatives, k)}"
            for k in ("autoregressive", "meanfield", "truncation", "batch")
            if getattr(cfg.prepare.negatives, k)
        )
        + f"; grouping {cfg.prepare.grouping.method}",
        "train": f"{cfg.train.loss} on {model}: {cfg.train.steps} steps, lr {cfg.train.lr:g}, beta {cfg.train.beta:g}, "
        f"{cfg.train.num_workers} workers" + (", LoRA" if cfg.train.lora else ""),
        "evaluate": f"reference {model} vs the trained policy",
        "run": " -> ".join(["sft"] * (not cfg.own_model) + ["prepare", f"train {cfg.train.loss}", "evaluate"])
        + f" on {model}",
    }
    staged = f" (staged in {cfg.job_dir(job)})" if is_uri(cfg.output_dir) else ""
    return f"[{job}] {cfg.name}: {parts.get(job, model)}; output {storage.job_store(cfg, job)}{staged}"


def run_cli(job: str, main, argv: list[str] | None = None, locate=None) -> None:
    """The command-line form of a job: its console (``jobs/console.py``; ``--verbose`` shows everything), a start
    line, and exit status 1 after printing the error and the path of the full log. ``locate(argv)`` gives the log
    directory, the start line and the local directories to copy into their stores at the end, logs included
    (default: from the run config)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    log_dir, start, outputs = (locate or partial(_run_config_place, job))(argv)
    try:
        _run_with_console(job, main, argv, log_dir, start)
    finally:
        for local, store in outputs:
            store.push(local)


def _run_with_console(job: str, main, argv: list[str], log_dir: Path, start: str) -> None:
    try:
        with console.Console(log_dir, job, verbose="--verbose" in argv) as out:
            print(f"{start}; full log {out.log_path}", flush=True)
            try:
                main(argv)
            finally:
                # Ray forwards workers' output from a thread of its own: stopped here, a late line still goes to the
                # log instead of reaching the console after it closes.
                ray.shutdown()
    except Exception:
        raise SystemExit(1) from None


def _run_config_place(job: str, argv: list[str]) -> tuple[Path, str, list[tuple[Path, storage.Store]]]:
    cfg = parse_config(job, argv)
    jobs = (*(s for s in STAGES if s != "sft" or not cfg.own_model), "run") if job == "run" else (job,)
    outputs = [(cfg.job_dir(j), storage.job_store(cfg, j)) for j in jobs] if is_uri(cfg.output_dir) else []
    return cfg.job_dir(job) / "logs", start_line(cfg, job), outputs


def write_report(cfg: Config, job: str, figures: dict) -> Path:
    """Write ``<output_dir>/<job>/report.json`` with the job's figures, and copy the job's files (plots, metrics)
    into ``output_dir`` when that is an object store."""
    path = cfg.job_dir(job) / "report.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    report = {"job": job, "config": cfg.name, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **figures}
    path.write_text(json.dumps(report, indent=2, sort_keys=True, default=str))
    store = storage.job_store(cfg, job)
    store.push(cfg.job_dir(job))
    print(f"[{job}] report: {store / 'report.json'}")
    return path
