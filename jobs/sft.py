"""Train the reference model (or reuse it): ``python -m jobs.sft --config configs/demo.yaml``."""
from __future__ import annotations

from jobs.common import init_ray, parse_config, write_report
from training.sft import run_sft


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config("sft", argv)
    init_ray(cfg)
    report = run_sft(cfg)
    write_report(cfg, "sft", report)
    print(
        f"[sft] held-out exact match {report['heldout_exact_match']:.1%}, "
        f"mean reward {report['heldout_mean_reward']:.3f}, wall {report['wall_seconds']:.0f}s"
    )
    return report


if __name__ == "__main__":
    main()
