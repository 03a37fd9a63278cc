"""``python -m benchmarks [--smoke] [--only NAME ...]``: run the comparisons, write the report, print the table."""
from __future__ import annotations

import argparse
import importlib
import json
import time
from pathlib import Path

COMPARISONS = {  # name -> module with run(cfg, out) -> dict, and the config overrides it needs
    "train_vs_trl": ("benchmarks.train_vs_trl", []),
}


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
    for name in args.only or COMPARISONS:
        module, overrides = COMPARISONS[name]
        cfg = bench_config(out, args.smoke, overrides)
        init_ray(cfg)
        print(f"\n===== bench: {name} =====", flush=True)
        started = time.perf_counter()
        report[name] = {**importlib.import_module(module).run(cfg, out), "wall_seconds": time.perf_counter() - started}
        path.write_text(json.dumps(report, indent=2, sort_keys=True))
    print(table(report))
    print(f"[bench] report: {path}")
    return report


if __name__ == "__main__":
    main()
