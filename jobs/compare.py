"""Method comparison: every objective trained from the same reference on the same shards and budget,
beside the reference and a control that spends the same steps on the dataset answers alone.

``python -m jobs.compare --config configs/demo.yaml`` writes
``<output_dir>/compare/report.json``, a table and a plot of held-out exact match and mean reward.
"""

from __future__ import annotations

import pandas as pd

from jobs import console
from jobs.common import ensure_model, init_ray, parse_config, run_cli, write_report
from orchestration.answers import answer_scores
from orchestration.evaluate import heldout_margins
from orchestration.prepare import run_prepare
from training import plots

METHODS = ("dpo", "swepo", "rpo", "cpo", "infonca", "nca", "sft")
# The control row: the same steps on the dataset answers (the anchors) alone, so a method's gain over the
# reference can be told apart from what more supervised steps would give.
LABELS = {"sft": "sft control (dataset answers only)"}


def main(argv: list[str] | None = None) -> dict:
    # DeepSpeed logs on import: imported here, once the console routes output to the job's log
    from orchestration.sft import run_sft
    from orchestration.train import run_train

    cfg = parse_config("compare", argv)
    ensure_model(cfg)
    init_ray(cfg)
    if not cfg.own_model:
        run_sft(cfg)
    run_prepare(cfg)
    out = cfg.job_dir("compare")
    ref = answer_scores(cfg, cfg.policy_dir())
    ref_accuracy = heldout_margins(cfg.policy_dir(), cfg)[0]
    rows = {
        "reference": {
            **ref,
            "implicit_accuracy_start": ref_accuracy,
            "implicit_accuracy": ref_accuracy,
            "train_seconds": 0.0,
        }
    }
    for method in METHODS:
        c = cfg.model_copy(deep=True)
        c.train.loss = method
        trained = run_train(c, job=f"compare/{method}")
        scores = answer_scores(c, trained["policy_dir"])
        rows[LABELS.get(method, method)] = {
            **scores,
            "implicit_accuracy_start": trained["heldout_accuracy_start"],
            "implicit_accuracy": trained["heldout_accuracy_end"],
            "train_seconds": trained["wall_seconds"],
        }
        print(
            f"[compare] {method}: " + ", ".join(f"{k} {v:.3f}" for k, v in rows[LABELS.get(method, method)].items()),
            flush=True,
        )
    columns = [
        "exact_match",
        "mean_reward",
        "slip_rate",
        "answer_tokens",
        "implicit_accuracy_start",
        "implicit_accuracy",
        "train_seconds",
    ]
    table = pd.DataFrame(rows).T
    table = table[[c for c in columns if c in table.columns]]
    shown = (
        ("exact_match", "mean_reward")
        if "exact_match" in table
        else ("implicit_accuracy", "mean_reward" if "mean_reward" in table else "implicit_accuracy_start")
    )
    plot = plots.method_bars(
        table, shown, out / "methods.png", f"held-out results per method ({cfg.name}, {cfg.train.steps} steps each)"
    )
    header = "| method | " + " | ".join(table.columns) + " |\n|" + " --- |" * (len(table.columns) + 1) + "\n"
    (out / "table.md").write_text(
        header
        + "".join(f"| {name} | " + " | ".join(f"{v:.3f}" for v in row) + " |\n" for name, row in table.iterrows())
    )
    console.show(table.to_string(float_format=lambda v: f"{v:.3f}"))
    report = {
        "methods": {k: {kk: float(vv) for kk, vv in v.items()} for k, v in rows.items()},
        "steps_per_method": cfg.train.steps,
        "plot": str(plot),
        "table": str(out / "table.md"),
    }
    write_report(cfg, "compare", report)
    return report


if __name__ == "__main__":
    run_cli("compare", main)
