"""Reference vs trained policy on held-out data: ``python -m jobs.evaluate --config configs/demo.yaml``."""
from __future__ import annotations

from jobs import console
from jobs.common import init_ray, parse_config, run_cli, write_report
from training.evaluation import run_evaluate


def comparison_table(report: dict) -> str:
    rows = [("held-out exact match", "exact_match"), ("held-out mean reward", "mean_reward"),
            ("held-out implicit-reward accuracy", "implicit_accuracy"),
            ("held-out answers that are the demonstrator's slip", "slip_rate"),
            ("held-out mean answer length (tokens)", "mean_answer_tokens")]
    lines = [f"{'':<50}{'reference':>15}{'policy':>10}"]
    lines += [f"{name:<50}{report['reference_' + key]:>15.3f}{report['policy_' + key]:>10.3f}" for name, key in rows
              if f"reference_{key}" in report]
    if "win_rate" in report:
        lines.append(f"{'policy win rate over the reference (reward)':<50}{'':>15}{report['win_rate']:>10.3f}")
    elif "reward_eval" in report:
        lines.append(f"generated answers not scored ({report['reward_eval']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config("evaluate", argv)
    init_ray(cfg)
    report = run_evaluate(cfg)
    write_report(cfg, "evaluate", report)
    console.show(comparison_table(report))
    return report


if __name__ == "__main__":
    run_cli("evaluate", main)
