"""Turn a source into training shards: ``python -m jobs.prepare --config configs/demo.yaml``."""

from __future__ import annotations

from jobs import console
from jobs.common import ensure_model, init_ray, parse_config, run_cli, write_report
from orchestration.prepare import run_prepare
from pipeline.report import summary_lines, summary_table


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config("prepare", argv)
    ensure_model(cfg)
    init_ray(cfg)
    report = run_prepare(cfg)
    print(summary_table(report), flush=True)  # the whole table in the job's log
    console.show(summary_lines(report))
    write_report(cfg, "prepare", report)
    return report


if __name__ == "__main__":
    run_cli("prepare", main)
