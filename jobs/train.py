"""Train the policy on prepared shards: ``python -m jobs.train --config configs/demo.yaml``."""

from __future__ import annotations

from jobs.common import ensure_model, init_ray, parse_config, run_cli, write_report


def main(argv: list[str] | None = None) -> dict:
    # DeepSpeed logs on import: imported here, once the console routes output to the job's log
    from orchestration.train import run_train

    cfg = parse_config("train", argv)
    ensure_model(cfg)
    init_ray(cfg)
    report = run_train(cfg)
    write_report(cfg, "train", report)
    print(
        f"[train] {report['loss']}: {report['optimizer_steps']} steps, held-out implicit-reward accuracy "
        f"{report['heldout_accuracy_start']:.3f} -> {report['heldout_accuracy_end']:.3f}"
    )
    return report


if __name__ == "__main__":
    run_cli("train", main)
