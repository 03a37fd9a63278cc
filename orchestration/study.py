"""A method study (``python -m jobs.study --config configs/studies/<name>.yaml``).

1. Per method, every point of its grid is trained at the first seed and scored on the validation split (training
   prompts carved off before any training, ``task.n_validation``); the best point by ``select_by`` is kept.
2. Every method at its chosen point is trained on every seed and scored on the held-out test split, beside the
   seed's reference model; at the first seed that is the model its validation run trained, not a second training.
3. The table gives each metric's mean ± 95% interval over seeds and paired differences against the reference and
   the control; a plot shows the intervals.

Each seed has its own task data, reference model and sampling. Runs that share data share it on disk: per seed one
reference model, per distinct data settings one prepare (in ``cache_dir``, shared by every study that uses the
same settings); every run's scores are kept in the study's own directory, so a study resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from configs.schema import Config
from configs.study import StudyConfig, StudyMethod, grid_points, run_config
from orchestration.answers import answer_scores
from orchestration.evaluate import heldout_margins, preference_scores_on_test_rows
from orchestration.prepare import run_prepare
from orchestration.sft import run_sft
from orchestration.train import run_train
from training import plots, study_stats


def point_name(point: dict) -> str:
    return ",".join(f"{key.rsplit('.', 1)[-1]}={value}" for key, value in point.items()) or "default"


def place_run(cfg: Config, root: Path, cache: Path, seed: int) -> Config:
    """Point ``cfg`` at a run directory of the study whose ``sft`` and ``prepare`` are the seed's shared reference
    model and the shards of its data settings, in the cache."""
    shared = cache / f"seed{seed}"
    data = cfg.section_hash("task", "model", "sft", "data", "prepare")
    run_dir = root / f"seed{seed}" / f"data-{data}"
    run_dir.mkdir(parents=True, exist_ok=True)
    for job, target in (
        ("sft", shared / f"sft-{cfg.section_hash('task', 'model', 'sft')}"),
        ("prepare", shared / f"prepare-{data}"),
    ):
        target.mkdir(parents=True, exist_ok=True)
        link = run_dir / job
        if link.is_symlink() and link.resolve() != target.resolve():  # the study or the cache was moved
            link.unlink()
        if not link.exists():
            os.symlink(os.path.relpath(target, run_dir), link)
    cfg.output_dir = str(run_dir)
    return cfg


def _data_ready(cfg: Config) -> None:
    if not cfg.own_model:
        run_sft(cfg)  # reused when the seed's reference exists
    run_prepare(cfg)  # reused when these shards exist


def prepared_test_rows(cfg: Config, root: Path, cache: Path, seed: int) -> Config | None:
    """On the user's data with ``data.test_fraction``: the config of the seed's test rows, prepared (once, in the
    cache) with the run's data settings but one prompt per group, so every method of the study, whatever its
    contrast groups, is scored on the same prompts. None on the embedded task (it has its own held-out split)."""
    if not cfg.data.test_fraction:
        return None
    test = cfg.model_copy(deep=True)
    test.data.rows = "test"
    test.prepare.grouping.method, test.prepare.grouping.group_size = "random", 1
    place_run(test, root, cache, seed)
    run_prepare(test)  # reused when these shards exist
    return test


def _scores(cfg: Config, model_dir: Path, split: str) -> dict:
    cfg.evaluate.split = split
    return answer_scores(cfg, model_dir)


def trainer_accuracy(cfg: Config, trained: dict) -> dict:
    """The trainer's implicit-reward accuracy on its held-out groups at the end (on the user's data, with its
    length-controlled version: the validation figures there)."""
    accuracy = {"implicit_accuracy": trained["heldout_accuracy_end"]}
    return {**accuracy, "lc_accuracy": trained["heldout_lc_accuracy_end"]} if cfg.data.source else accuracy


def run_one(
    study: StudyConfig, method: StudyMethod, point: dict, seed: int, split: str, root: Path, quick: bool
) -> dict:
    """Train one method at one grid point and seed (once: the first seed's validation run is also its test run) and
    score it on ``split``; the training is kept in its run dir's trained.json, the scores in scores_<split>.json."""
    cfg = place_run(run_config(study, method, point, seed, quick), root, Path(study.cache_dir), seed)
    job = f"{method.name}/{point_name(point)}"
    kept, trained_file = cfg.job_dir(job) / f"scores_{split}.json", cfg.job_dir(job) / "trained.json"
    if kept.is_file():
        return json.loads(kept.read_text())
    if trained_file.is_file():
        trained = json.loads(trained_file.read_text())
    else:
        _data_ready(cfg)
        trained = run_train(cfg, job=job)
        trained_file.write_text(json.dumps(trained, indent=2, default=str))
    started = time.perf_counter()
    policy = Path(trained["policy_dir"])
    test = prepared_test_rows(cfg, root, Path(study.cache_dir), seed) if split == "heldout" else None
    scores = {
        **(
            preference_scores_on_test_rows(policy, cfg, test)
            if test
            else {**_scores(cfg, policy, split), **trainer_accuracy(cfg, trained)}
        ),
        "train_seconds": trained["wall_seconds"],
        "score_seconds": time.perf_counter() - started,
    }
    kept.write_text(json.dumps(scores, indent=2))
    print(
        f"[study] {method.name} ({point_name(point)}, seed {seed}, {split}): "
        + ", ".join(f"{k} {v:.3f}" for k, v in scores.items() if k in study_stats.METRICS),
        flush=True,
    )
    return scores


def reference_scores(study: StudyConfig, method: StudyMethod, seed: int, root: Path, quick: bool) -> dict:
    """The seed's reference model on the held-out test split (its implicit accuracy is 0.5 by construction), with
    ``method``'s data for the held-out groups."""
    cfg = place_run(
        run_config(study, method, grid_points(method.grid)[0], seed, quick), root, Path(study.cache_dir), seed
    )
    kept = Path(cfg.output_dir) / "reference_scores.json"
    if kept.is_file():
        return json.loads(kept.read_text())
    _data_ready(cfg)
    test = prepared_test_rows(cfg, root, Path(study.cache_dir), seed)
    scores = (
        preference_scores_on_test_rows(cfg.policy_dir(), cfg, test)
        if test
        else {
            **_scores(cfg, cfg.policy_dir(), "heldout"),
            "implicit_accuracy": heldout_margins(cfg.policy_dir(), cfg)[0],
        }
    )
    kept.write_text(json.dumps(scores, indent=2))
    return scores


def choose_settings(
    study: StudyConfig, methods: list[StudyMethod], root: Path, seed: int, quick: bool
) -> tuple[dict[str, dict], dict[str, dict]]:
    """Each method's grid point chosen on the validation split at ``seed``, and the validation scores behind it."""
    chosen, validation = {}, {}
    for method in methods:
        points = grid_points(method.grid)[:1] if quick else grid_points(method.grid)
        if len(points) > 1 or (study.choose_method and not quick):
            scores = {point_name(p): run_one(study, method, p, seed, "validation", root, quick) for p in points}
            best = study_stats.choose(scores, study.select_by)
            validation[method.name] = scores
            print(
                f"[study] {method.name}: chose {best} ({study.select_by} {scores[best][study.select_by]:.3f} on "
                "validation)",
                flush=True,
            )
            chosen[method.name] = points[list(scores).index(best)]
        else:
            chosen[method.name] = points[0]
    return chosen, validation


def study_table(
    study: StudyConfig, final: dict[str, dict[int, dict]], chosen: dict[str, dict], validation: dict[str, dict]
) -> tuple[str, list[dict], list[dict], str | None]:
    """The study's markdown (rows, then its claims, then the best method on validation when it chooses one), its
    rows, its claims and that best method."""
    rows = study_stats.summary_rows(final, study.control)
    metrics = study_stats.present_metrics(rows)
    table = study_stats.markdown(rows, metrics)
    claims = study_stats.claim_rows(final, study.claims, study.select_by)
    if claims:
        table += "\n\nPaired differences over seeds, mean ± 95% interval:\n\n" + study_stats.claims_markdown(
            claims, metrics, study.select_by
        )
    best_method = None
    if study.choose_method and all(m in validation for m in chosen):
        at_chosen = {m: validation[m][point_name(p)] for m, p in chosen.items()}
        best_method = study_stats.choose(at_chosen, study.select_by)
        table += (
            f"\n\nBest method on the validation split ({study.select_by} at its chosen settings): "
            f"**{best_method}** ({point_name(chosen[best_method])})."
        )
    return table, rows, claims, best_method


def run_study(study: StudyConfig, quick: bool = False) -> dict:
    """Run (or resume) the study; its report's wall time sums every invocation's, an interrupted one's too."""
    started = time.perf_counter()
    root = Path(study.output_dir) / ("quick" if quick else "full")
    root.mkdir(parents=True, exist_ok=True)
    clock = root / "invocation_seconds.json"
    invocations = json.loads(clock.read_text()) if clock.is_file() else []
    try:
        report = _study(study, root, quick)
    finally:
        invocations.append(time.perf_counter() - started)
        clock.write_text(json.dumps(invocations))
    report = {**report, "wall_seconds": sum(invocations), "invocation_seconds": invocations}
    (root / "report.json").write_text(json.dumps(report, indent=2, default=str))
    return report


def test_rows_ready(study: StudyConfig, methods: list[StudyMethod], seeds: list[int], root: Path, quick: bool) -> None:
    """Every seed's test rows prepared (:func:`prepared_test_rows`) before any training, so data whose test side
    is empty stops the study before it has trained anything."""
    for seed in seeds:
        for method in methods:
            for point in grid_points(method.grid)[: 1 if quick else None]:
                # the test rows' config is placed by prepared_test_rows: no run directory is made for the run here
                prepared_test_rows(run_config(study, method, point, seed, quick), root, Path(study.cache_dir), seed)


def _study(study: StudyConfig, root: Path, quick: bool) -> dict:
    seeds, methods = study.seeds_run(quick), study.methods_run(quick)
    test_rows_ready(study, methods, seeds, root, quick)
    chosen, validation = choose_settings(study, methods, root, seeds[0], quick)
    final: dict[str, dict[int, dict]] = {"reference": {}}
    for seed in seeds:
        final["reference"][seed] = reference_scores(study, methods[0], seed, root, quick)
        for method in methods:
            final.setdefault(method.name, {})[seed] = run_one(
                study, method, chosen[method.name], seed, "heldout", root, quick
            )
    table, rows, claims, best_method = study_table(study, final, chosen, validation)
    (root / "table.md").write_text(table + "\n")
    metric = study_stats.present_metrics(rows)[0]
    plot = plots.interval_bars(
        rows,
        metric,
        root / "study.png",
        f"{study.name}: held-out {metric}, mean and 95% interval over {len(seeds)} seed(s)",
    )
    return {
        "study": study.name,
        "quick": quick,
        "seeds": seeds,
        "chosen": {m: point_name(p) for m, p in chosen.items()},
        "best_method": best_method,
        "validation": validation,
        "final": {m: {str(s): v for s, v in by_seed.items()} for m, by_seed in final.items()},
        "rows": rows,
        "claims": claims,
        "table": str(root / "table.md"),
        "plot": str(plot),
    }
