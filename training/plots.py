"""PNG figures of a run: training curves, reward-margin histograms, before/after bars, a study's intervals."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def training_curves(metrics_csv: Path, out: Path, title: str) -> Path:
    df = pd.read_csv(metrics_csv).drop_duplicates("step", keep="last").sort_values("step")
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, key, label in zip(
        axes, ("loss", "accuracy", "grad_norm"), ("loss", "implicit-reward accuracy (train batch)", "gradient norm")
    ):
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


def _paired_bars(
    names: list[str],
    first: list[float],
    second: list[float],
    labels: tuple[str, str],
    out: Path,
    title: str,
    size: tuple[float, float],
    tick_rotation: float = 0,
) -> Path:
    fig, ax = plt.subplots(figsize=size)
    x = range(len(names))
    w = 0.38
    for offset, values, label in ((-w / 2, first, labels[0]), (w / 2, second, labels[1])):
        ax.bar_label(ax.bar([i + offset for i in x], values, w, label=label), fmt="%.3f", fontsize=8)
    ax.set_xticks(list(x), names, rotation=tick_rotation, ha="right" if tick_rotation else "center")
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def before_after_bars(values: dict[str, tuple[float, float]], out: Path, title: str) -> Path:
    """``values``: metric name -> (reference, policy)."""
    names = list(values)
    return _paired_bars(
        names,
        [values[n][0] for n in names],
        [values[n][1] for n in names],
        ("reference", "trained policy"),
        out,
        title,
        (6.5, 4),
    )


def method_bars(table: pd.DataFrame, columns: tuple[str, str], out: Path, title: str) -> Path:
    """``table`` indexed by method; bars of two of its columns (held-out metrics) per method."""
    return _paired_bars(
        list(table.index),
        list(table[columns[0]]),
        list(table[columns[1]]),
        tuple(f"held-out {c.replace('_', ' ')}" for c in columns),
        out,
        title,
        (8, 4),
        tick_rotation=20,
    )  # eight method names run into each other level


def interval_bars(rows: list[dict], metric: str, out: Path, title: str) -> Path:
    """A study's rows (``training/study_stats.summary_rows``): one bar per method, its mean and 95% interval."""
    shown = [r for r in rows if metric in r]
    means = [r[metric][0] for r in shown]
    errors = [0.0 if r[metric][1] != r[metric][1] else r[metric][1] for r in shown]  # NaN (one seed): no bar
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(shown) + 2), 4))
    bars = ax.bar(range(len(shown)), means, yerr=errors, capsize=4, color="tab:blue", alpha=0.8)
    ax.bar_label(bars, fmt="%.3f", fontsize=8, padding=6)
    ax.set_ylim(0, 1.15 * max((m + e for m, e in zip(means, errors)), default=1.0) or 1.0)  # room for the labels
    ax.set_xticks(range(len(shown)), [r["method"] for r in shown], rotation=20, ha="right")
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
