"""Turn a source into training shards: ``python -m jobs.prepare --config configs/demo.yaml``."""
from __future__ import annotations

from jobs import console
from jobs.common import init_ray, parse_config, run_cli, write_report
from pipeline.graph import run_prepare
from pipeline.report import summary_table


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config("prepare", argv)
    init_ray(cfg)
    report = run_prepare(cfg)
    console.show(summary_table(report))
    write_report(cfg, "prepare", report)
    return report


if __name__ == "__main__":
    run_cli("prepare", main)
