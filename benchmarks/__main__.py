"""``python -m benchmarks [--smoke] [--only NAME ...]``: run the comparisons, write the report, print the table."""
from __future__ import annotations

import argparse
import importlib
import json
import time
from pathlib import Path

# name -> module with run(cfg, out, smoke) -> dict and, where it changes configs/bench.yaml, OVERRIDES
COMPARISONS = {"train_vs_trl": "benchmarks.train_vs_trl", "k_cost": "benchmarks.k_cost",
               "generate_vs_hf": "benchmarks.generate_vs_hf", "prepare_stages": "benchmarks.prepare_stages",
               "train_memory": "benchmarks.train_memory", "prepare_scale": "benchmarks.prepare_scale",
               "grouping_quality": "benchmarks.grouping_quality", "length_study": "benchmarks.length_study"}
OPT_IN = {"length_study"}  # a study of about half an hour: run it with --only


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks")
    ap.add_argument("--out", default="runs/bench", help="results directory (report.json goes here)")
    ap.add_argument("--smoke", action="store_true", help="toy sizes: checks the harness, measures nothing")
    ap.add_argument("--only", nargs="+", choices=list(COMPARISONS), help="run only these comparisons")
    args = ap.parse_args(argv)

    from benchmarks.common import bench_config, matmul_flops
    from benchmarks.report import table
    from jobs.common import init_ray

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "report.json"
    report = json.loads(path.read_text()) if path.is_file() and args.only else {}
    report.update({"smoke": args.smoke, "matmul_flops_1_thread": matmul_flops(1), "matmul_flops_2_threads": matmul_flops(2)})
    for name in args.only or [c for c in COMPARISONS if c not in OPT_IN]:
        module = importlib.import_module(COMPARISONS[name])
        cfg = bench_config(out, args.smoke, getattr(module, "OVERRIDES", []))
        init_ray(cfg)
        print(f"\n===== bench: {name} =====", flush=True)
        started = time.perf_counter()
        report[name] = {**module.run(cfg, out, args.smoke), "wall_seconds": time.perf_counter() - started}
        path.write_text(json.dumps(report, indent=2, sort_keys=True))
    print(table(report))
    print(f"[bench] report: {path}")
    return report


if __name__ == "__main__":
    main()
