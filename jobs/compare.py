"""Method comparison: every objective trained from the same reference on the same shards and budget,
beside the reference and a control that spends the same steps on the dataset answers alone.

``python -m jobs.compare --config configs/demo.yaml`` writes
``<output_dir>/compare/report.json``, a table and a plot of held-out exact match and mean reward.
"""
from __future__ import annotations

import pandas as pd

from jobs.common import init_ray, parse_config, write_report
from pipeline.graph import run_prepare
from training import plots
from training.evaluation import heldout_margins, task_eval
from training.sft import run_sft
from training.train import run_train

METHODS = ("dpo", "swepo", "rpo", "cpo", "infonca", "nca", "sft")
# The control row: the same steps on the dataset answers (the anchors) alone, so a method's gain over the
# reference can be told apart from what more supervised steps would give.
LABELS = {"sft": "sft control (dataset answers only)"}


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config("compare", argv)
    init_ray(cfg)
    run_sft(cfg)
    run_prepare(cfg)
    out = cfg.job_dir("compare")
    _, ref = task_eval(cfg.policy_dir(), cfg)
    ref_accuracy = heldout_margins(cfg.policy_dir(), cfg)[0]
    rows = {"SFT reference": {**ref, "implicit_accuracy_start": ref_accuracy, "implicit_accuracy": ref_accuracy, "train_seconds": 0.0}}
    for method in METHODS:
        c = cfg.model_copy(deep=True)
        c.train.loss = method
        trained = run_train(c, job=f"compare/{method}")
        _, scores = task_eval(trained["policy_dir"], c)
        rows[LABELS.get(method, method)] = {
            **scores, "implicit_accuracy_start": trained["heldout_accuracy_start"],
            "implicit_accuracy": trained["heldout_accuracy_end"], "train_seconds": trained["wall_seconds"]}
        print(f"[compare] {method}: exact match {scores['exact_match']:.3f}, mean reward {scores['mean_reward']:.3f}", flush=True)
    table = pd.DataFrame(rows).T[["exact_match", "mean_reward", "slip_rate", "implicit_accuracy_start", "implicit_accuracy",
                                  "train_seconds"]]
    plot = plots.method_bars(table, out / "methods.png", f"held-out results per method ({cfg.name}, {cfg.train.steps} steps each)")
    header = "| method | " + " | ".join(table.columns) + " |\n|" + " --- |" * (len(table.columns) + 1) + "\n"
    (out / "table.md").write_text(header + "".join(
        f"| {name} | " + " | ".join(f"{v:.3f}" for v in row) + " |\n" for name, row in table.iterrows()))
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    report = {"methods": {k: {kk: float(vv) for kk, vv in v.items()} for k, v in rows.items()},
              "steps_per_method": cfg.train.steps, "plot": str(plot), "table": str(out / "table.md")}
    write_report(cfg, "compare", report)
    return report


if __name__ == "__main__":
    main()
