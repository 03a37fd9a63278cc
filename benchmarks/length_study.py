"""Study (opt-in: ``python -m benchmarks --only length_study``): do summed log-probs let a loss be won by length?

SWEPO, InfoNCA, NCA and DPO (best- against worst-scored response) on AlpacaEval best-of-16 groups (all 11 scored
responses per prompt, truncated to the random bench model's length), the random bench model as reference, each with
``train.reward_normalization`` ``sum`` and ``mean``, for ``STEPS`` steps. Per step: loss, gradient norm, the
within-prompt correlation of implicit reward and response length, and length-controlled accuracy (pairs whose
lengths differ by less than 10%). Writes ``length_study.png`` and the table the README shows.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from benchmarks.common import bench_vocab, ensure_model, fresh
from configs.schema import Config
from orchestration.prepare import run_prepare
from orchestration.train import run_train

LOSSES = ("swepo", "infonca", "nca", "dpo")
NORMALIZATIONS = ("sum", "mean")
STEPS, SMOKE_STEPS = 100, 3
RANDOM_MODEL = True  # the study of record ran on the random model (README, Length)
OVERRIDES = [
    "data.source=../shared/data/alpacaeval_bo16_scored.jsonl.gz",
    "data.split=null",
    "data.max_chars=null",
    "prepare.reward=source",
    "prepare.max_rows=400",
    "prepare.grouping.group_size=1",
    "model.max_length=128",
    "train.batch_groups=2",
    "train.micro_groups=1",
    "train.warmup_steps=5",
    "train.lr=1.0e-4",
    "train.heldout_fraction=0.1",
    "train.checkpoint_every=1000",
]
CURVES = ("loss", "grad_norm", "reward_length_corr", "lc_accuracy")


def _plot(curves: dict[str, pd.DataFrame], path: Path) -> None:
    import matplotlib  # deferred: the backend is set before pyplot is imported

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after the backend

    fig, axes = plt.subplots(len(CURVES), len(LOSSES), figsize=(4 * len(LOSSES), 2.6 * len(CURVES)), sharex=True)
    for col, loss in enumerate(LOSSES):
        for row, metric in enumerate(CURVES):
            ax = axes[row][col]
            for norm in NORMALIZATIONS:
                df = curves[f"{loss}_{norm}"]
                ax.plot(df["step"], df[metric].rolling(5, min_periods=1).mean(), label=norm)
            ax.set_title(f"{loss}: {metric}", fontsize=9)
            if row == len(CURVES) - 1:
                ax.set_xlabel("step")
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def run(cfg: Config, out: Path, smoke: bool) -> dict:
    ensure_model(cfg, bench_vocab(smoke))
    fresh(cfg.job_dir("prepare"), Path(cfg.ray.storage_path))
    prep = run_prepare(cfg)
    steps = SMOKE_STEPS if smoke else STEPS
    runs, curves = {}, {}
    for loss in LOSSES:
        for norm in NORMALIZATIONS:
            job = f"length_{loss}_{norm}"
            fresh(cfg.job_dir(job))
            train = cfg.train.model_copy(update={"loss": loss, "reward_normalization": norm, "steps": steps})
            report = run_train(cfg.model_copy(update={"train": train}), job=job)
            df = pd.read_csv(report["metrics_csv"]).drop_duplicates("step", keep="last")
            curves[f"{loss}_{norm}"] = df
            last = df.tail(max(1, steps // 5))  # the last fifth of training
            runs[f"{loss}_{norm}"] = {
                "final_loss": float(last["loss"].mean()),
                "final_grad_norm": float(last["grad_norm"].mean()),
                "train_reward_length_corr": float(last["reward_length_corr"].mean()),
                "train_lc_accuracy": float(last["lc_accuracy"].mean()),
                "heldout_accuracy": report["heldout_accuracy_end"],
                "heldout_lc_accuracy": report["heldout_lc_accuracy_end"],
                "heldout_reward_length_corr": report["heldout_reward_length_corr_end"],
                "heldout_top_response_tokens": report["heldout_top_response_tokens_end"],
            }
            print(f"[bench] length_study {loss} {norm}: {runs[f'{loss}_{norm}']}", flush=True)
    _plot(curves, out / "length_study.png")
    return {"rows_prepared": prep["rows_out"], "steps": steps, "runs": runs, "figure": str(out / "length_study.png")}
