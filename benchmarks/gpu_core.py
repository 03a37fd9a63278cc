"""The compute core on a bare GPU machine: exact and fast, with torch and transformers alone.

``python -m benchmarks.gpu_core`` (``make gpu-core``) needs no Ray, vLLM or DeepSpeed: only torch, transformers and
pydantic (for the configs; ``make gpu-core-wheels`` fetches its wheels for a machine without network). It writes one
JSON (``--out``) and prints one table:

1. **Conformance**: the zoo of ``tests/zoo.py`` with eager and sdpa attention, in fp32 (tolerance 1e-4, as on the
   CPU) and in bf16 (tolerance: twice the round-off of the model's own direct bf16 forward against its fp32 one,
   since the packed and the direct bf16 forwards each lie within that of the exact value). Measured for the
   trainer's and the reference scorer's summed response log-probs and meanfield's log-softmax, with the sdpa
   kernel the block mask runs on (from the profiler).
2. **The trainer's step at real size**: random-weight models with the shapes of Llama-3.2-1B and Qwen2.5-1.5B,
   bf16, fused AdamW, forward and backward through the project's objective (SWEPO over K responses, each prompt
   packed once with its responses, the chunked head) at K = 2, 4 and 8, prompts of 256 and responses of up to 256
   tokens; tokens/s, model FLOPs utilisation (6 x parameters per computed token, attention not counted) against
   the bf16 matmul peak measured in the same run, and peak memory. Beside it, on the same model and tokens, the
   padded forward and backward of every ``prompt + response`` as its own row, which is what TRL's DPOTrainer
   does with its concatenated pairs.
3. **Precision**: summed response log-probs of the same models in bf16 against fp32 (mean and maximum absolute
   difference), and the implicit-reward accuracy at step 0 of a bf16 policy against a bf16 reference, as the
   trainer scores it (its own step-0 forward: exactly 0.5) and against the reference scorer's other layout.

``--smoke`` runs every part at toy sizes on the CPU (CI), so the script is known to work before a GPU is lent.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.gpu_step import (
    DTYPES,
    SHAPES,
    SMOKE_SHAPES,
    build,
    precision,
    synchronize,
    synthetic_groups,
    trainer_step,
)
from models.architectures import forward_plan
from models.logprobs import packed_logps
from models.packing import pack_shared_prompts
from tests.conformance import REFUSED, TOKENIZER, VOCAB, measure, sample_data
from tests.zoo import ARCHITECTURES, build_model

FP32_TOLERANCE = 1e-4


def matmul_peak(device: torch.device, n: int) -> float:
    """Measured bf16 matmul FLOP/s of ``n x n`` matrices on ``device``."""
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    synchronize(device)
    reps, started = 10, time.perf_counter()
    for _ in range(reps):
        a @ b
    synchronize(device)
    return 2 * n**3 * reps / (time.perf_counter() - started)


def sdpa_kernels(name: str, device: torch.device, dtype: torch.dtype) -> list[str]:
    """The scaled-dot-product-attention kernels the trainer's packed forward (block masks) runs on."""
    model = build_model(name, VOCAB, "sdpa", tokenizer=TOKENIZER).to(device, dtype)
    plan = forward_plan(model)
    prompts, responses = sample_data()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.no_grad(), profile(activities=activities) as prof:
        packed_logps(model, pack_shared_prompts(prompts, responses, 0, 32, plan.share_prompts), plan)
    return sorted(
        {
            e.key
            for e in prof.key_averages()
            if "scaled_dot_product" in e.key and e.key != "aten::scaled_dot_product_attention"
        }
    )


def conformance(device: torch.device, smoke: bool) -> list[dict]:
    names = ["llama", "qwen2", "gemma2"] if smoke else [n for n in ARCHITECTURES if n not in REFUSED]
    rows = []
    for name in names:
        for backend in ("eager", "sdpa"):
            for dname, dtype in DTYPES.items():
                r = measure(name, backend, device, dtype)
                tolerance = FP32_TOLERANCE if dtype == torch.float32 else 2 * r["roundoff"]
                mf_tolerance = FP32_TOLERANCE if dtype == torch.float32 else 2 * r["meanfield_roundoff"]
                ok = r["trainer"] <= tolerance and r["reference"] <= tolerance and r["meanfield"] <= mf_tolerance
                row = {
                    "architecture": name,
                    "attention": backend,
                    "dtype": dname,
                    **r,
                    "tolerance": tolerance,
                    "meanfield_tolerance": mf_tolerance,
                    "exact": ok,
                }
                if backend == "sdpa" and dtype == torch.bfloat16:
                    row["sdpa_kernels"] = sdpa_kernels(name, device, dtype)
                rows.append(row)
                print(
                    f"[gpu_core] {name:<16} {backend:<5} {dname}: trainer {r['trainer']:.1e} reference "
                    f"{r['reference']:.1e} "
                    f"meanfield {r['meanfield']:.1e} (tolerance {tolerance:.1e}) {'ok' if ok else 'NOT EXACT'}",
                    flush=True,
                )
    return rows


def _markdown(header: list[str], rows: list[list]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + " --- |" * len(header),
        *("| " + " | ".join(map(str, r)) + " |" for r in rows),
    ]


def table(report: dict) -> str:
    conformance = [
        [
            r["architecture"],
            r["attention"],
            r["dtype"],
            f"{r['trainer']:.1e}",
            f"{r['reference']:.1e}",
            f"{r['meanfield']:.1e}",
            f"{r['tolerance']:.1e}",
            "yes" if r["exact"] else "NO",
            ", ".join(r.get("sdpa_kernels", [])),
        ]
        for r in report["conformance"]
    ]
    steps = [
        [
            name,
            k,
            s["project"]["tokens_per_step"],
            f"{s['project']['tokens_per_second']:.0f}",
            f"{s['project']['mfu']:.1%}",
            f"{s['project']['peak_memory_gb']:.1f}",
            f"{s['padded']['tokens_per_second']:.0f}",
            f"{s['padded']['mfu']:.1%}",
            f"{s['padded']['peak_memory_gb']:.1f}",
            f"{s['speedup']:.2f}x",
        ]
        for name, per_k in report["step"].items()
        for k, s in per_k.items()
    ]
    precision = [
        [
            name,
            f"{p['bf16_vs_fp32_mean_abs']:.3g}",
            f"{p['bf16_vs_fp32_max_abs']:.3g}",
            f"{p['step0_accuracy_own_forward']:.3f}",
            f"{p['step0_accuracy_reference_scorer_layout']:.3f}",
        ]
        for name, p in report["precision"].items()
    ]
    return "\n".join(
        [
            f"device: {report['device']}; bf16 matmul peak {report['matmul_peak_tflops']:.3g} TFLOP/s",
            "",
            *_markdown(
                [
                    "architecture",
                    "attention",
                    "dtype",
                    "trainer",
                    "reference",
                    "meanfield",
                    "tolerance",
                    "exact",
                    "sdpa kernel",
                ],
                conformance,
            ),
            "",
            *_markdown(
                [
                    "model",
                    "K",
                    "tokens/step",
                    "project tok/s",
                    "MFU",
                    "peak GB",
                    "padded tok/s",
                    "padded MFU",
                    "padded GB",
                    "speedup",
                ],
                steps,
            ),
            "",
            *_markdown(
                [
                    "model",
                    "bf16 vs fp32, mean abs",
                    "max abs",
                    "step-0 accuracy, trainer's own reference",
                    "reference scorer's layout",
                ],
                precision,
            ),
        ]
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="toy sizes on whatever device there is (CI)")
    parser.add_argument("--out", default="runs/gpu_core.json", help="where the JSON report goes")
    parser.add_argument("--skip-conformance", action="store_true", help="only the step and precision parts")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    started = time.perf_counter()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 conformance means fp32
    peak = matmul_peak(device, 512 if args.smoke else 8192)
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "smoke": args.smoke,
        "torch": torch.__version__,
        "matmul_peak_tflops": peak / 1e12,
    }
    report["conformance"] = [] if args.skip_conformance else conformance(device, args.smoke)
    shapes = SMOKE_SHAPES if args.smoke else SHAPES
    prompt_len, max_response, prompts = (16, 16, 2) if args.smoke else (256, 256, 4)
    warmup, steps = (1, 1) if args.smoke else (2, 5)
    report["step"], report["precision"] = {}, {}
    for name, shape in shapes.items():
        vocab = shape().vocab_size
        model = build(shape, device, torch.bfloat16)
        report["step"][name] = {}
        for k in (2, 4, 8):
            groups = synthetic_groups(k, prompts, prompt_len, max_response, vocab, seed=k)
            report["step"][name][str(k)] = s = trainer_step(model, groups, device, peak, warmup, steps)
            print(
                f"[gpu_core] {name} K={k}: {s['project']['tokens_per_second']:.0f} tok/s, MFU "
                f"{s['project']['mfu']:.1%}, "
                f"{s['project']['peak_memory_gb']:.1f} GB; padded {s['padded']['tokens_per_second']:.0f} tok/s "
                f"({s['speedup']:.2f}x)",
                flush=True,
            )
        del model
        report["precision"][name] = precision(
            shape, synthetic_groups(4, prompts, prompt_len, max_response, vocab, seed=99), device
        )
        print(f"[gpu_core] {name} precision: {report['precision'][name]}", flush=True)
    report["wall_seconds"] = time.perf_counter() - started
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(table(report))
    print(f"[gpu_core] {report['wall_seconds']:.0f} s; report: {out}")
    return report


if __name__ == "__main__":
    main()
