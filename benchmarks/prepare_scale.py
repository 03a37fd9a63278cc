"""Comparison 6: the prepare job at 10k, 40k and 160k prompts through the same cheap stages (tokenize, prompt
embeddings, neighbour grouping, truncation negatives, shard writing).

Each size runs ``python -m jobs.prepare`` in its own process, as a user runs it; a sampler reads the peak RSS of
the driver and of the largest Ray worker while it runs, and the wall time gives seconds per 1,000 rows. The
targets are about growth: the driver's peak RSS and the seconds per 1,000 rows at 160k over their values at 10k.
``BENCH_BASELINE_CODE=<checkout>`` measures another checkout of the project with the same harness beside this one
(how the README's "before" column was measured: the parent commit, whose driver held every row).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from benchmarks.common import RANDOM_PRECISION, bench_vocab, ensure_model, fresh
from configs.schema import Config

RANDOM_MODEL = True  # driver memory and time as the rows grow: the model's compute is not what it measures
SIZES, SMOKE_SIZES = (10_000, 40_000, 160_000), (200, 400, 800)
ROOT = Path(__file__).resolve().parents[1]
CHEAP = [
    "data.split=null",
    "prepare.max_rows=null",
    "prepare.reward=none",
    "prepare.embed_responses=false",
    "prepare.ref_logps=false",
    "prepare.grouping.method=neighbors",
    "prepare.grouping.group_size=4",
    "prepare.negatives.truncation=1",
    "prepare.shard_groups=64",
    "prepare.batch_size=256",
]
VERBS = [
    "Explain",
    "Summarize",
    "Write a poem about",
    "List three facts about",
    "Compare",
    "Give advice on",
    "Describe the history of",
    "Write a short story about",
    "Argue for",
    "Plan a lesson on",
]
TOPICS = [
    "photosynthesis",
    "the French revolution",
    "sourdough bread",
    "black holes",
    "tax returns",
    "jazz piano",
    "marathon training",
    "quantum computing",
    "urban gardening",
    "the stock market",
    "volcanoes",
    "chess openings",
    "climate policy",
    "machine learning",
    "medieval castles",
    "coffee brewing",
    "ocean currents",
    "job interviews",
]
AUDIENCES = ["a child", "a beginner", "an expert", "a busy manager", "a student", "my grandmother"]


def write_source(path: Path, rows: int, seed: int = 0) -> Path:
    """``rows`` distinct ground-truth prompts of related topics (so neighbour grouping has something to find)."""
    if path.is_file() and sum(1 for _ in path.open()) == rows:
        return path
    rng = random.Random(seed)
    with path.open("w") as f:
        for i in range(rows):
            verb, topic, audience = rng.choice(VERBS), rng.choice(TOPICS), rng.choice(AUDIENCES)
            f.write(
                json.dumps(
                    {
                        "id": f"p{i}",
                        "prompt": f"{verb} {topic} for {audience} (request {i}).",
                        "response": f"Here is what {audience} should know about {topic}: it matters.",
                    }
                )
                + "\n"
            )
    return path


def _peak_rss(pid: int, stop: threading.Event, peaks: dict) -> None:
    """Peak RSS (MB) of the driver process and of the largest Ray worker below it, sampled every 0.2 s."""
    driver = psutil.Process(pid)
    while not stop.is_set():
        try:
            peaks["driver"] = max(peaks.get("driver", 0.0), driver.memory_info().rss / 2**20)
            for child in driver.children(recursive=True):
                try:
                    if child.cmdline()[:1] and child.cmdline()[0].startswith("ray::"):
                        peaks["worker"] = max(peaks.get("worker", 0.0), child.memory_info().rss / 2**20)
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
        except psutil.NoSuchProcess:
            return
        time.sleep(0.2)


def measure(code: Path, out: Path, source: Path, model_dir: Path, rows: int) -> dict:
    sets = [
        f"output_dir={out}",
        "model.gguf_file=null",
        f"model.policy_dir={model_dir}",
        *RANDOM_PRECISION,
        f"data.source={source}",
        *CHEAP,
    ]
    fresh(out / "prepare")
    started = time.perf_counter()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jobs.prepare",
            "--config",
            "configs/bench.yaml",
            *[a for s in sets for a in ("--set", s)],
        ],
        cwd=code,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    stop, peaks = threading.Event(), {}
    sampler = threading.Thread(target=_peak_rss, args=(proc.pid, stop, peaks), daemon=True)
    sampler.start()
    log, _ = proc.communicate()
    wall = time.perf_counter() - started
    stop.set()
    sampler.join()
    (out / f"prepare_{rows}.log").write_text(log)
    if proc.returncode:
        raise RuntimeError(f"prepare of {rows} rows failed in {code}:\n{log[-3000:]}")
    report = json.loads((out / "prepare" / "report.json").read_text())
    return {
        "rows": rows,
        "rows_out": report["rows_out"],
        "wall_seconds": wall,
        "seconds_per_krow": wall / rows * 1000,
        "driver_peak_rss_mb": peaks.get("driver"),
        "largest_worker_rss_mb": peaks.get("worker"),
        "grouping_seconds": report["seconds_per_stage"].get("groups"),
        "mean_within_group_similarity": report.get("mean_within_group_similarity"),
    }


def _side(code: Path, out: Path, model_dir: Path, sizes: tuple[int, ...]) -> dict:
    per_size = {}
    for rows in sizes:
        out.parent.mkdir(parents=True, exist_ok=True)
        source = write_source(out.parent / f"source_{rows}.jsonl", rows)
        per_size[rows] = measure(code, out, source.resolve(), model_dir, rows)
        print(f"[bench] prepare_scale {code.name} {rows} rows: {per_size[rows]}", flush=True)
    small, large = per_size[sizes[0]], per_size[sizes[-1]]
    return {
        "per_size": per_size,
        "prepare_driver_rss_ratio": large["driver_peak_rss_mb"] / small["driver_peak_rss_mb"],
        "prepare_seconds_per_krow_ratio": large["seconds_per_krow"] / small["seconds_per_krow"],
    }


def run(cfg: Config, out: Path, smoke: bool) -> dict:
    model_dir = ensure_model(cfg, bench_vocab(smoke)).resolve()
    sizes = SMOKE_SIZES if smoke else SIZES
    result = _side(ROOT, (out / "prepare_scale" / "project").resolve(), model_dir, sizes)
    if os.environ.get("BENCH_BASELINE_CODE"):
        baseline = Path(os.environ["BENCH_BASELINE_CODE"]).resolve()
        result["baseline"] = _side(baseline, (out / "prepare_scale" / "baseline").resolve(), model_dir, sizes)
    return result
