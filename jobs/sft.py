"""Train the toy reference model (or reuse it): ``python -m jobs.sft --config configs/toy_demo.yaml``.

With ``model.policy_dir`` or ``model.gguf_file`` (a pretrained model) there is nothing to train: the job says so and
exits."""

from __future__ import annotations

from jobs.common import init_ray, parse_config, run_cli, write_report


def main(argv: list[str] | None = None) -> dict:
    # DeepSpeed logs on import: imported here, once the console routes output to the job's log
    from orchestration.sft import run_sft

    cfg = parse_config("sft", argv)
    if cfg.own_model:
        model = cfg.model.gguf_file or cfg.model.policy_dir
        print(f"[sft] {model}: a pretrained model is the reference; no toy model to train")
        return {"skipped": True, "policy_dir": cfg.model.policy_dir or str(cfg.gguf_model_dir())}
    init_ray(cfg)
    report = run_sft(cfg)
    write_report(cfg, "sft", report)
    print(
        f"[sft] held-out exact match {report['heldout_exact_match']:.1%}, "
        f"mean reward {report['heldout_mean_reward']:.3f}, wall {report['wall_seconds']:.0f}s"
    )
    return report


if __name__ == "__main__":
    run_cli("sft", main)
