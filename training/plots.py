"""PNG figures of a run: training curves, reward-margin histograms, before/after bars."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def training_curves(metrics_csv: Path, out: Path, title: str) -> Path:
    df = pd.read_csv(metrics_csv).drop_duplicates("step", keep="last").sort_values("step")
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, key, label in zip(axes, ("loss", "accuracy", "grad_norm"), ("loss", "implicit-reward accuracy (train batch)", "gradient norm")):
        ax.plot(df["step"], df[key], marker=".", lw=1)
        ax.set_xlabel("optimizer step")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def margin_histogram(margins: dict[str, list[float]], out: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, values in margins.items():
        ax.hist(values, bins=40, alpha=0.55, label=label)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel("implicit-reward margin  β·(r_anchor − r_negative)")
    ax.set_ylabel("pairs")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def before_after_bars(values: dict[str, tuple[float, float]], out: Path, title: str, labels=("reference", "policy")) -> Path:
    """``values``: metric name -> (before, after)."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    names = list(values)
    x = range(len(names))
    w = 0.38
    before = [values[n][0] for n in names]
    after = [values[n][1] for n in names]
    b1 = ax.bar([i - w / 2 for i in x], before, w, label=labels[0])
    b2 = ax.bar([i + w / 2 for i in x], after, w, label=labels[1])
    ax.bar_label(b1, fmt="%.3f", fontsize=8)
    ax.bar_label(b2, fmt="%.3f", fontsize=8)
    ax.set_xticks(list(x), names)
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def method_bars(table: pd.DataFrame, out: Path, title: str) -> Path:
    """``table`` indexed by method with columns exact_match and mean_reward."""
    fig, ax = plt.subplots(figsize=(8, 4))
    x = range(len(table))
    w = 0.38
    b1 = ax.bar([i - w / 2 for i in x], table["exact_match"], w, label="held-out exact match")
    b2 = ax.bar([i + w / 2 for i in x], table["mean_reward"], w, label="held-out mean reward")
    ax.bar_label(b1, fmt="%.3f", fontsize=8)
    ax.bar_label(b2, fmt="%.3f", fontsize=8)
    ax.set_xticks(list(x), list(table.index))
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
