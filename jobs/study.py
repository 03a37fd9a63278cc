"""A method study: ``python -m jobs.study --config configs/studies/<name>.yaml [--quick]`` (``orchestration/study.py``).

Writes ``runs/studies/<name>/{full,quick}/``: ``table.md``, ``study.png`` and ``report.json``; every run's scores
are kept there, so an interrupted study resumes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from configs.base import ConfigError
from configs.study import load_study, run_config
from jobs import console
from jobs.common import ensure_model, init_ray, run_cli


def parse_study(argv: list[str] | None):
    parser = argparse.ArgumentParser(prog="python -m jobs.study")
    parser.add_argument("--config", required=True, help="study YAML, e.g. configs/studies/imperfect_demonstrator.yaml")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one seed, the first grid point of the methods the claims compare, the study's quick settings",
    )
    parser.add_argument("--verbose", action="store_true", help="show library logs on the console too")
    args = parser.parse_args(argv)
    try:
        return load_study(args.config), args
    except ConfigError as exc:
        print(f"config error:\n{exc}", file=sys.stderr)
        raise SystemExit(2) from None


def main(argv: list[str] | None = None) -> dict:
    # DeepSpeed logs on import: imported here, once the console routes output to the study's log
    from orchestration.study import run_study

    study, args = parse_study(argv)
    first = run_config(study, study.methods[0], {}, study.seeds[0], args.quick)
    ensure_model(first)  # the study's runs share the base config's model
    init_ray(first)  # the cluster of the study's runs
    report = run_study(study, quick=args.quick)
    console.show(
        f"\n===== study {study.name} ({'quick' if args.quick else 'full'}, {report['wall_seconds'] / 60:.1f} min) "
        "=====\n" + open(report["table"]).read()
    )
    print(f"[study] plot: {report['plot']}; report: {report['table'].replace('table.md', 'report.json')}")
    return report


def locate(argv: list[str]) -> tuple[Path, str, list]:
    """The study's log directory and start line, and nothing to copy to an object store (jobs.common.run_cli)."""
    study, args = parse_study(argv)
    runs = len(study.seeds_run(args.quick))
    return (
        Path(study.output_dir) / "logs",
        (
            f"[study] {study.name}: {len(study.methods_run(args.quick))} methods, {runs} seed(s)"
            f"{' (quick)' if args.quick else ''}, base {study.base}; output {study.output_dir}"
        ),
        [],
    )


if __name__ == "__main__":
    run_cli("study", main, locate=locate)
