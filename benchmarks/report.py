"""The printed table of ``runs/bench/report.json``: both sides, the ratio, the target."""
from __future__ import annotations

# (comparison, ratio key, target, higher is better)
TARGETS = [
    ("train_vs_trl", "train_vs_trl_ratio", 2.0, True),
    ("k_cost", "k11_vs_k2_cost_ratio", 1.2, False),
    ("generate_vs_hf", "generate_vs_hf_ratio", 2.5, True),
]


def table(report: dict) -> str:
    lines = [f"{'comparison':<16}{'ratio':<26}{'value':>8}{'target':>10}  met"]
    for name, key, target, higher in TARGETS:
        if name in report:
            value = report[name][key]
            met = value >= target if higher else value <= target
            lines.append(f"{name:<16}{key:<26}{value:>8.2f}{('>=' if higher else '<=') + format(target, '.2f'):>10}  "
                         f"{'yes' if met else 'NO'}")
    if "train_vs_trl" in report:
        r = report["train_vs_trl"]
        for side in ("project", "trl"):
            lines.append(f"  {side:<8} samples/s {r[side]['samples_per_second']:.2f}  tokens/s {r[side]['tokens_per_second']:.0f}"
                         f"  peak RSS {r[side]['peak_rss_mb']:.0f} MB")
    return "\n".join(lines)
