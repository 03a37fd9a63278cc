"""Reference vs trained policy on held-out data: ``python -m jobs.evaluate --config configs/demo.yaml``."""

from __future__ import annotations

from jobs import console
from jobs.common import ensure_model, init_ray, parse_config, run_cli, write_report
from orchestration.evaluate import run_evaluate


def comparison_table(report: dict) -> str:
    """Reference against policy; for exact match and mean reward also the paired difference over prompts with its
    95% interval, and exact match per family."""
    rows = [
        ("held-out exact match", "exact_match"),
        ("held-out mean reward", "mean_reward"),
        ("held-out implicit-reward accuracy", "implicit_accuracy"),
        ("held-out answers that are the demonstrator's slip", "slip_rate"),
        ("held-out mean answer length (tokens)", "mean_answer_tokens"),
    ]
    lines = [f"{'':<50}{'reference':>11}{'policy':>9}{'policy - reference (95%)':>28}"]
    for name, key in rows:
        if f"reference_{key}" not in report:
            continue
        diff = f"{report[key + '_diff']:+.3f} +- {report[key + '_diff_ci95']:.3f}" if f"{key}_diff" in report else ""
        lines.append(f"{name:<50}{report['reference_' + key]:>11.3f}{report['policy_' + key]:>9.3f}{diff:>28}")
    for family, scores in report.get("exact_match_by_family", {}).items():
        lines.append(f"{'  exact match, ' + family:<50}{scores['reference']:>11.3f}{scores['policy']:>9.3f}")
    if "win_rate" in report:
        lines.append(f"{'policy win rate over the reference (reward)':<50}{'':>11}{report['win_rate']:>9.3f}")
    elif "reward_eval" in report:
        lines.append(f"generated answers not scored ({report['reward_eval']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config("evaluate", argv)
    ensure_model(cfg)
    init_ray(cfg)
    report = run_evaluate(cfg)
    write_report(cfg, "evaluate", report)
    console.show(comparison_table(report))
    return report


if __name__ == "__main__":
    run_cli("evaluate", main)
