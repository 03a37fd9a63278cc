"""The arithmetic of a method study: 95% intervals over seeds, paired differences, and the grid's choice."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

from scipy import stats

METRICS = ("exact_match", "mean_reward", "slip_rate", "answer_tokens", "implicit_accuracy", "lc_accuracy")
# Exact match per task family follows METRICS, whichever families the task has.
FAMILY_METRIC = re.compile(r"exact_match\[[^\]]+\]")


def family_metric(family: str) -> str:
    """The name of a task family's exact match among the study's metrics (matches :data:`FAMILY_METRIC`)."""
    return f"exact_match[{family}]"


def metrics_of(keys: Iterable[str]) -> tuple[str, ...]:
    """The study metrics among ``keys``: those of :data:`METRICS` in its order, then the per-family exact matches."""
    keys = set(keys)
    return tuple(m for m in METRICS if m in keys) + tuple(sorted(k for k in keys if FAMILY_METRIC.fullmatch(k)))


def run_metrics(final: dict[str, dict[int, dict]]) -> tuple[str, ...]:
    """The metrics some run of ``final`` (method -> seed -> scores) has."""
    return metrics_of(k for by_seed in final.values() for scores in by_seed.values() for k in scores)


def interval(values: list[float]) -> tuple[float, float]:
    """(mean, half-width of the two-sided 95% Student-t interval); the half-width is NaN for one value."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)


def paired(method: dict[int, dict], baseline: dict[int, dict], metric: str) -> tuple[float, float] | None:
    """Interval of the per-seed difference method − baseline, over the seeds both have."""
    seeds = sorted(s for s in method if s in baseline and metric in method[s] and metric in baseline[s])
    if not seeds:
        return None
    return interval([method[s][metric] - baseline[s][metric] for s in seeds])


def choose(scores: dict[str, dict], metric: str, tie_break: str = "mean_reward") -> str:
    """The grid point with the highest validation ``metric``; on ties the highest ``tie_break``, then the first."""
    missing = [name for name, s in scores.items() if metric not in s]
    if missing:
        raise ValueError(f"grid points {missing} have no {metric!r} to choose by")
    order = list(scores)
    return max(scores, key=lambda name: (scores[name][metric], scores[name].get(tie_break, 0.0), -order.index(name)))


def summary_rows(final: dict[str, dict[int, dict]], control: str | None) -> list[dict]:
    """One row per method (``reference`` first): mean ± interval of each metric over seeds, and paired differences
    against the reference and the control."""
    baselines = {"reference": final.get("reference"), "control": final.get(control) if control else None}
    rows, metrics = [], run_metrics(final)
    for method, by_seed in final.items():
        row: dict = {"method": method, "seeds": len(by_seed)}
        for metric in metrics:
            values = [s[metric] for s in by_seed.values() if metric in s]
            if not values:
                continue
            row[metric] = interval(values)
            for name, baseline in baselines.items():
                diff = paired(by_seed, baseline, metric) if baseline is not None and baseline is not by_seed else None
                if diff is not None:
                    row[f"{metric}_vs_{name}"] = diff
        rows.append(row)
    return rows


def present_metrics(rows: list[dict]) -> tuple[str, ...]:
    """The metrics some row of ``rows`` has (:func:`metrics_of`: the embedded task has all; user data a reward)."""
    return metrics_of(k for row in rows for k in row)


def verdict(diff: tuple[float, float] | None) -> str:
    """Whether a paired difference (better − than) shows the claim: its 95% interval above 0, below 0, or across."""
    if diff is None:
        return "no common seeds"
    low, high = diff[0] - diff[1], diff[0] + diff[1]
    if math.isnan(diff[1]):
        return "one seed: no interval"
    return "holds" if low > 0 else "reversed" if high < 0 else "not shown (interval spans 0)"


def claim_rows(final: dict[str, dict[int, dict]], claims: list, metric: str) -> list[dict]:
    """Per claim whose two methods both ran (``--quick`` may run only some, ``quick_methods``): the paired
    differences better − than of every metric and the verdict on ``metric``."""
    rows, metrics = [], run_metrics(final)
    for claim in (c for c in claims if c.better in final and c.than in final):
        row: dict = {"claim": claim.claim, "better": claim.better, "than": claim.than}
        for name in metrics:
            diff = paired(final[claim.better], final[claim.than], name)
            if diff is not None:
                row[name] = diff
        row["verdict"] = verdict(row.get(metric))
        rows.append(row)
    return rows


def claims_markdown(rows: list[dict], metrics: tuple[str, ...], metric: str) -> str:
    lines = [
        "| claim (better − than) | " + " | ".join(metrics) + f" | verdict ({metric}) |",
        "| --- |" + " --- |" * (len(metrics) + 1),
    ]
    for row in rows:
        lines.append(
            f"| {row['claim']} ({row['better']} − {row['than']}) | "
            + " | ".join(cell(row.get(m), signed=True) for m in metrics)
            + f" | {row['verdict']} |"
        )
    return "\n".join(lines)


def cell(value: tuple[float, float] | None, signed: bool = False) -> str:
    """``mean ± half-width``; '–' where a row has no such figure, 'n/a' where its seeds counted nothing (NaN: e.g. no
    held-out pair ordered by its scores)."""
    if value is None:
        return "–"
    mean, half = value
    if math.isnan(mean):
        return "n/a"
    text = f"{mean:+.3f}" if signed else f"{mean:.3f}"
    return text if math.isnan(half) else f"{text} ± {half:.3f}"


def markdown(rows: list[dict], metrics: tuple[str, ...]) -> str:
    """The study table: each metric's mean ± 95% interval, then its paired differences."""
    columns = [(m, m, False) for m in metrics] + [
        (f"{m}_vs_{b}", f"{m} − {b}", True) for m in metrics[:1] for b in ("reference", "control")
    ]
    lines = [
        "| method | seeds | " + " | ".join(title for _, title, _ in columns) + " |",
        "| --- | --- |" + " --- |" * len(columns),
    ]
    for row in rows:
        lines.append(
            f"| {row['method']} | {row['seeds']} | "
            + " | ".join(cell(row.get(key), signed) for key, _, signed in columns)
            + " |"
        )
    return "\n".join(lines)
