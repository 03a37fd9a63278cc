"""Comparison 4: every model stage of prepare on SmolLM2, in fp32 and in bf16, as a fraction of the limit.

The demo's regime: the embedded task's prompts in chat form, 4 samples each from the model itself. Each
(stage, precision) runs the project's own actor class in a process of its own on both cores (its threads and
memory its own), on the same rows: vLLM sampling, meanfield resampling, reference log-probs and prompt
embeddings. Rates count the tokens a stage computes (a prompt shared by its responses once); the limit is
the bf16 matmul peak over 2 x parameters FLOPs per token (the embedder's own, its embedding tables aside).
Beside the speeds: how far bf16's summed response log-probs and embeddings lie from fp32's.

    python -m benchmarks.stages --stage reference --dtype bf16 --rows ROWS.parquet --model DIR --out FILE.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from actors.embedder import Embedder
from actors.generator import VLLMNegatives
from actors.reference import MeanfieldNegatives, ReferenceLogps
from benchmarks.common import (
    CONFIG,
    bench_vocab,
    ensure_model,
    fresh,
    limit_tokens_per_second,
    matmul_flops,
    parameters,
)
from configs.schema import Config, load_config
from orchestration.prepare import run_prepare
from pipeline.frames import as_lists
from pipeline.shards import read_shards
from pipeline.stages import anchor_index

STAGES = ("sampling", "meanfield", "reference", "embeddings")
DTYPES = ("fp32", "bf16")
THREADS = os.cpu_count()
ROWS, SMOKE_ROWS = 96, 8
# The demo's task (configs/demo.yaml), prepared into prompts and nothing else: the stages run outside the graph.
OVERRIDES = [
    "data.source=null",
    "task.form=chat",
    "task.families=[add_digits, copy]",
    "task.n_train=400",
    "task.n_heldout=160",
    "model.max_length=128",
    "prepare.reward=none",
    "prepare.ref_logps=false",
]
SAMPLING = [
    "prepare.negatives.autoregressive=4",
    "prepare.negatives.temperature=0.7",
    "prepare.negatives.max_tokens=24",
]
REFERENCE_PROMPTS_PER_PASS = 64


def _sampling(cfg: Config, model_dir: str, dtype: str):
    return VLLMNegatives(
        model_dir,
        cfg.prepare.negatives,
        cfg.seed,
        cfg.model.max_length,
        cfg.prepare.vllm,
        dtype,
        cpu_bind=f"0-{THREADS - 1}",
    )


def _meanfield(cfg: Config, model_dir: str, dtype: str):
    return MeanfieldNegatives(
        model_dir, 1, cfg.prepare.negatives.meanfield_fraction, cfg.seed, THREADS, dtype, cfg.prepare.score_batch_size
    )


def _reference(cfg: Config, model_dir: str, dtype: str):
    return ReferenceLogps(model_dir, cfg.pack_row_tokens(), THREADS, dtype, REFERENCE_PROMPTS_PER_PASS)


def _embeddings(cfg: Config, model_dir: str, dtype: str):
    return Embedder(
        cfg.prepare.embedder_dir, "prompts", cfg.prepare.embed_batch_size, THREADS, cfg.prepare.embed_max_tokens, dtype
    )


ACTORS = {"sampling": _sampling, "meanfield": _meanfield, "reference": _reference, "embeddings": _embeddings}
# What each stage's output holds for the fp32-against-bf16 comparison.
VALUES = {"reference": "ref_logps", "embeddings": "prompt_embedding"}


def computed_tokens(stage: str, actor, rows: pd.DataFrame, result: pd.DataFrame) -> int:
    """The tokens ``stage`` computed on ``rows``: sampled ones, a prompt with its ground truth (meanfield), a
    prompt once with all its responses (reference), or the embedder's word pieces of each prompt."""
    if stage == "sampling":  # each request's prompt once (its samples share the prefill) and every sampled token
        return sum(len(p) for p in rows["prompt_ids"]) + int(result["generated_tokens"].sum())
    if stage == "meanfield":
        return sum(
            len(p) + len(r[anchor_index(o)])
            for p, r, o in zip(rows["prompt_ids"], rows["response_ids"], rows["origins"])
        )
    if stage == "reference":
        return sum(len(p) + sum(len(r) for r in rs) for p, rs in zip(rows["prompt_ids"], rows["response_ids"]))
    limit = actor.model.max_seq_length
    return sum(min(len(ids), limit) for ids in actor.model.tokenizer(list(rows["prompt"]))["input_ids"])


def measure(cfg: Config, stage: str, dtype: str, model_dir: str, rows_file: Path, out: Path) -> dict:
    """One stage in one precision, in this process: start (timed apart), a warm-up batch, then the rows timed."""
    torch.set_num_threads(THREADS)
    rows = as_lists(pd.read_parquet(rows_file).assign(skip_reason=""))
    started = time.perf_counter()
    actor = ACTORS[stage](cfg, model_dir, dtype)
    start = time.perf_counter() - started
    actor(rows.iloc[:4])
    started = time.perf_counter()
    result = actor(rows)
    seconds = time.perf_counter() - started
    if stage == "sampling":  # its output is the other stages' input: prompts with the model's own samples
        result.drop(columns=["skip_reason"]).to_parquet(out.with_suffix(".rows.parquet"))
    tokens = computed_tokens(stage, actor, rows, result)
    values = result[VALUES[stage]].map(list).tolist() if stage in VALUES else None
    extra = (
        {"generated_tokens_per_second": int(result["generated_tokens"].sum()) / seconds} if stage == "sampling" else {}
    )
    # the embedder is a model of its own (all-MiniLM-L6-v2): its limit counts its own matmul parameters (its untied
    # embedding tables are lookups, not matmuls)
    own = (
        {"parameters": sum(p.numel() for n, p in actor.model.named_parameters() if ".embeddings." not in f".{n}")}
        if stage == "embeddings"
        else {}
    )
    return {
        "stage": stage,
        "dtype": dtype,
        "rows": len(rows),
        "tokens": tokens,
        "seconds": seconds,
        "start_seconds": start,
        "tokens_per_second": tokens / seconds,
        "values": values,
        **extra,
        **own,
    }


def _in_process(cfg_args: list[str], stage: str, dtype: str, model_dir: Path, rows: Path, out: Path) -> dict:
    result = out / f"{stage}_{dtype}.json"
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.stages",
        "--stage",
        stage,
        "--dtype",
        dtype,
        "--model",
        str(model_dir),
        "--rows",
        str(rows),
        "--out",
        str(result),
        *[a for s in cfg_args for a in ("--set", s)],
    ]
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": str(THREADS)})
    return json.loads(result.read_text())


def _difference(a: list, b: list) -> dict:
    x, y = (np.concatenate([np.ravel(np.asarray(v, dtype=np.float64)) for v in side if len(v)]) for side in (a, b))
    d = np.abs(x - y)
    return {"mean_abs": float(d.mean()), "max_abs": float(d.max()), "values": int(d.size)}


def run(cfg: Config, out: Path, smoke: bool) -> dict:
    model_dir = ensure_model(cfg, bench_vocab(smoke))
    n_params = parameters(model_dir)
    peak = matmul_flops(THREADS)
    work = out / "stages"
    fresh(cfg.job_dir("prepare"), work)
    work.mkdir(parents=True)
    n = SMOKE_ROWS if smoke else ROWS
    prompts = read_shards(run_prepare(cfg)["shards_dir"]).slice(0, n).to_pandas()
    prompts.to_parquet(work / "prompts.parquet")
    cfg_args = [f"output_dir={cfg.output_dir}", *OVERRIDES, *SAMPLING, *cfg_overrides(cfg)]
    results: dict[str, dict] = {}
    for stage in STAGES:
        rows = work / "prompts.parquet" if stage == "sampling" else work / "sampling_bf16.rows.parquet"
        for dtype in ("bf16", "fp32") if stage == "sampling" else DTYPES:
            r = _in_process(cfg_args, stage, dtype, model_dir, rows, work)
            r["limit_tokens_per_second"] = limit_tokens_per_second(peak, r.get("parameters", n_params), 2)
            r["limit_fraction"] = r["tokens_per_second"] / r["limit_tokens_per_second"]
            results.setdefault(stage, {})[dtype] = r
            print(
                f"[bench] {stage} {dtype}: {r['tokens_per_second']:.0f} tok/s = {r['limit_fraction']:.1%} of the limit",
                flush=True,
            )
    differences = {
        stage: _difference(results[stage]["fp32"].pop("values"), results[stage]["bf16"].pop("values"))
        for stage in VALUES
    }
    for per_dtype in results.values():
        for r in per_dtype.values():
            r.pop("values", None)
    return {
        "parameters": n_params,
        "matmul_flops": peak,
        "threads": THREADS,
        "stages": results,
        "bf16_vs_fp32": differences,
        "mean_response_tokens": float(
            pd.read_parquet(work / "sampling_bf16.rows.parquet")["response_ids"]
            .map(lambda rs: np.mean([len(r) for r in rs]))
            .mean()
        ),
        "sampling_limit_fraction": results["sampling"]["bf16"]["limit_fraction"],
        "reference_limit_fraction": results["reference"]["bf16"]["limit_fraction"],
    }


def cfg_overrides(cfg: Config) -> list[str]:
    """The settings a measuring process needs to rebuild the same config (the random model's, under --smoke)."""
    if cfg.model.gguf_file is None:
        return ["model.gguf_file=null", f"model.policy_dir={cfg.model.policy_dir}"]
    return []


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.stages")
    ap.add_argument("--stage", choices=STAGES, required=True)
    ap.add_argument("--dtype", choices=DTYPES, required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--rows", required=True, help="parquet of prepared rows")
    ap.add_argument("--out", required=True)
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args(argv)
    cfg = load_config(CONFIG, args.set)
    out = Path(args.out)
    out.write_text(json.dumps(measure(cfg, args.stage, args.dtype, args.model, Path(args.rows), out)))


if __name__ == "__main__":
    main()
