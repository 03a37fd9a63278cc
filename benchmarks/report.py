"""The printed table of ``runs/bench/report.json``: both sides, the ratio, the target."""

from __future__ import annotations

# (comparison, ratio key, target, higher is better)
TARGETS = [
    ("train_vs_trl", "train_vs_trl_ratio", 3.0, True),
    ("train_vs_trl", "train_limit_fraction", 0.6, True),
    ("k_cost", "k11_vs_k2_cost_ratio", 1.0, False),
    ("generate_vs_hf", "generate_vs_hf_ratio", 3.0, True),
    ("generate_vs_hf", "sampling_limit_fraction", 0.4, True),
    ("stages", "reference_limit_fraction", 0.6, True),
    ("train_memory", "train_worker_rss_ratio", 1.15, False),
    ("train_memory", "tokens_per_second_vs_whole_dataset", 1.0, True),
    ("prepare_scale", "prepare_driver_rss_ratio", 1.25, False),
    ("prepare_scale", "prepare_seconds_per_krow_ratio", 1.2, False),
    ("grouping_quality", "worst_of_exact", 0.9, True),
]


def _sides(report: dict) -> list[str]:
    lines = []
    if "train_vs_trl" in report:
        r = report["train_vs_trl"]
        for side, s in [*(("project " + k, v) for k, v in r["precision"].items()), ("trl lora_bf16", r["trl"])]:
            lines.append(
                f"  train {side:<20} samples/s {s['samples_per_second']:7.2f}  tokens/s {s['tokens_per_second']:7.0f}"
                f"  of limit {s['limit_fraction']:6.1%}  peak RSS {s['peak_rss_mb']:6.0f} MB"
            )
    if "k_cost" in report:
        for k, s in report["k_cost"]["per_k"].items():
            lines.append(
                f"  SWEPO K={k:<8} ms/response token {s['seconds_per_response_token'] * 1e3:7.3f}"
                f"  x K=2 {s['cost_vs_k2']:5.2f}  peak RSS {s['peak_rss_mb']:6.0f} MB"
            )
    if "generate_vs_hf" in report:
        r = report["generate_vs_hf"]
        for side in ("project_vllm", "hf_generate"):
            s = r[side]
            lines.append(
                f"  generate {side:<12} tokens/s {s['tokens_per_second']:7.0f}  (engine start "
                f"{s['engine_start_seconds']:.1f} s)"
                "  generated tokens/s of the sampling limit "
                f"{s['tokens_per_second'] / r['sampling_limit_tokens_per_second']:.1%}"
            )
    for side in ("per_scale", "whole_dataset"):
        for scale, s in report.get("train_memory", {}).get(side, {}).items():
            name = "addressed" if side == "per_scale" else side
            lines.append(
                f"  train {name:<13} {scale}x data ({s['rows']} rows)  worker peak RSS {s['worker_peak_rss_mb']:6.0f} "
                f"MB  tokens/s {s['tokens_per_second']:7.0f}"
            )
    for side in ("project", "baseline"):
        r = report.get("prepare_scale", {})
        for rows, s in (r if side == "project" else r.get("baseline", {})).get("per_size", {}).items():
            lines.append(
                f"  prepare {side:<8} {int(rows):>7} rows  driver peak RSS {s['driver_peak_rss_mb']:6.0f} MB"
                f"  largest worker {s['largest_worker_rss_mb'] or 0:6.0f} MB  s/1k rows {s['seconds_per_krow']:6.2f}"
            )
    for stage, per_dtype in report.get("stages", {}).get("stages", {}).items():
        rates = "  ".join(
            f"{d} {v['tokens_per_second']:6.0f} tok/s ({v['limit_fraction']:5.1%} of limit)"
            for d, v in sorted(per_dtype.items())
        )
        diff = report["stages"]["bf16_vs_fp32"].get(stage)
        lines.append(
            f"  stage {stage:<11} {rates}"
            + (f"  bf16-fp32 |d| mean {diff['mean_abs']:.3g} max {diff['max_abs']:.3g}" if diff else "")
        )
    return lines


def table(report: dict) -> str:
    lines = [f"{'comparison':<18}{'ratio':<30}{'value':>8}{'target':>10}  met"]
    for name, key, target, higher in TARGETS:
        if name in report:
            value = report[name][key]
            met = value >= target if higher else value <= target
            lines.append(
                f"{name:<18}{key:<30}{value:>8.2f}{('>=' if higher else '<=') + format(target, '.2f'):>10}  "
                f"{'yes' if met else 'NO'}"
            )
    return "\n".join(lines + _sides(report))


def _f(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def markdown(report: dict) -> str:
    """The README's tables of a SmolLM2 run: the comparisons with their peers, and the precision table per stage."""
    peaks = ", ".join(
        f"{name} {report[name]['matmul_flops'] / 1e9:.0f}" for name in ("train_vs_trl", "generate_vs_hf", "stages")
    )
    out = [
        f"bf16 matmul peak on 2 threads, as each comparison measured it before its runs (GFLOP/s): {peaks}.",
        "",
        "| comparison | project | peer | ratio | target |",
        "| --- | --- | --- | --- | --- |",
    ]
    t = report["train_vs_trl"]
    p, trl = t["project"], t["trl"]
    out.append(
        f"| train: DPO, LoRA r16, bf16, batch 8 pairs, max length {t['model_max_length']}, "
        f"{p['timed_steps']} timed steps "
        f"| {p['samples_per_second']:.2f} samples/s, {_f(p['tokens_per_second'])} tok/s, {p['limit_fraction']:.1%} of "
        f"the LoRA limit | TRL {trl['trl_version']} `DPOTrainer` (LoRA r16, bf16 autocast, precomputed reference): "
        f"{trl['samples_per_second']:.2f} samples/s, {_f(trl['tokens_per_second'])} tok/s | "
        f"**{t['train_vs_trl_ratio']:.2f}×** | ≥ 3 |"
    )
    g = report["generate_vs_hf"]
    out.append(
        f"| sampling: {g['prompts']} chat prompts × {g['samples_per_prompt']} samples, ≤ {g['max_tokens']} tokens, "
        f"bf16 | vLLM stage: {_f(g['project_vllm']['tokens_per_second'])} generated tok/s, "
        f"{g['sampling_limit_fraction']:.1%} "
        f"of the limit | `transformers` `generate`: {_f(g['hf_generate']['tokens_per_second'])} tok/s, "
        f"{g['hf_sampling_limit_fraction']:.1%} | **{g['generate_vs_hf_ratio']:.2f}×** | ≥ 3 |"
    )
    k = dict(sorted(report["k_cost"]["per_k"].items(), key=lambda kv: int(kv[0])))
    costs = " / ".join(f"{v['seconds_per_response_token'] * 1e3:.2f}" for v in k.values())
    out.append(
        f"| SWEPO cost per response token, K = {' / '.join(k)} (AlpacaEval best-of-16) | {costs} ms | K = 2 | "
        f"**{report['k_cost']['k11_vs_k2_cost_ratio']:.2f}×** at K = 11 | ≤ 1.0 |"
    )
    s = report["stages"]
    out += [
        "",
        "| stage | fp32 tok/s | bf16 tok/s | bf16 ÷ fp32 | bf16, of the limit | bf16 against fp32 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for stage in ("sampling", "meanfield", "reference", "embeddings"):
        per, d = s["stages"][stage], s["bf16_vs_fp32"].get(stage)
        what = "summed log-prob per response" if stage == "reference" else "embedding component"
        diff = f"{what}: mean {d['mean_abs']:.3g}, max {d['max_abs']:.3g}" if d else "samples (no value compared)"
        out.append(
            f"| {stage} | {_f(per['fp32']['tokens_per_second'])} | {_f(per['bf16']['tokens_per_second'])} | "
            f"{per['bf16']['tokens_per_second'] / per['fp32']['tokens_per_second']:.2f}× | "
            f"{per['bf16']['limit_fraction']:.1%} | {diff} |"
        )
    for name, r in t["precision"].items():
        method, dtype = name.split("_")
        if dtype == "bf16":
            f32 = t["precision"][f"{method}_fp32"]
            out.append(
                f"| training, {method} (DeepSpeed, 2 workers) | {_f(f32['computed_tokens_per_second'])} | "
                f"{_f(r['computed_tokens_per_second'])} | "
                f"{r['computed_tokens_per_second'] / f32['computed_tokens_per_second']:.2f}× | "
                f"{r['limit_fraction']:.1%} | against reference log-probs of its own precision |"
            )
    return "\n".join(out)


if __name__ == "__main__":
    import json
    import sys

    print(markdown(json.load(open(sys.argv[1] if len(sys.argv) > 1 else "runs/bench/report.json"))))
