"""``python -m benchmarks [--smoke] [--only NAME ...]``: run the comparisons, write the report, print the table."""

from __future__ import annotations

import argparse
import importlib
import json
import time
from pathlib import Path

import torch

# name -> module with run(cfg, out, smoke) -> dict; where it changes configs/bench.yaml, OVERRIDES; where it runs
# the random-weight model rather than SmolLM2, RANDOM_MODEL = True
COMPARISONS = {
    "train_vs_trl": "benchmarks.train_vs_trl",
    "generate_vs_hf": "benchmarks.generate_vs_hf",
    "stages": "benchmarks.stages",
    "k_cost": "benchmarks.k_cost",
    "train_memory": "benchmarks.train_memory",
    "grouping_quality": "benchmarks.grouping_quality",
    "prepare_scale": "benchmarks.prepare_scale",
    "length_study": "benchmarks.length_study",
}
# Run with --only: the length study (about 50 minutes), prepare at 160k prompts (about 30 minutes) and training
# memory at 8x the demo's data (about 7 minutes): they measure how the random model's runs scale with the data.
OPT_IN = {"length_study", "prepare_scale", "train_memory"}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks")
    ap.add_argument("--out", default="runs/bench", help="results directory (report.json goes here)")
    ap.add_argument("--smoke", action="store_true", help="toy sizes: checks the harness, measures nothing")
    ap.add_argument("--only", nargs="+", choices=list(COMPARISONS), help="run only these comparisons")
    args = ap.parse_args(argv)

    # heavy (Ray, transformers): after the arguments parse, so --help is instant
    from benchmarks.common import bench_config, matmul_flops
    from benchmarks.report import table
    from jobs.common import init_ray

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "report.json"
    report = json.loads(path.read_text()) if path.is_file() and args.only else {}
    report.update(
        {
            "smoke": args.smoke,
            **{
                f"matmul_{d}_flops_{n}_threads": matmul_flops(n, dtype)
                for d, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))
                for n in (1, 2)
            },
        }
    )
    for name in args.only or [c for c in COMPARISONS if c not in OPT_IN]:
        module = importlib.import_module(COMPARISONS[name])
        cfg = bench_config(out, args.smoke, getattr(module, "OVERRIDES", []), getattr(module, "RANDOM_MODEL", False))
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
