"""The study's config, arithmetic and validation split; the runner itself on the tiny config (slow)."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import pytest
from scipy import stats

from configs.base import ConfigError
from configs.schema import load_config
from configs.study import StudyClaim, grid_points, load_study, run_config
from orchestration import study
from orchestration.study import place_run, study_table
from pipeline import task
from pipeline.source_errors import SourceError
from tests.conftest import ROOT
from training import study_stats

STUDIES = sorted((ROOT / "configs" / "studies").glob("*.yaml"))


def test_interval_is_the_student_t_interval():
    mean, half = study_stats.interval([0.2, 0.4, 0.9])
    sd = math.sqrt(((0.2 - 0.5) ** 2 + (0.4 - 0.5) ** 2 + (0.9 - 0.5) ** 2) / 2)
    assert mean == pytest.approx(0.5) and half == pytest.approx(stats.t.ppf(0.975, 2) * sd / math.sqrt(3))
    assert half == pytest.approx(0.8957, abs=1e-4)  # 4.3027 x 0.36056 / 1.73205
    assert math.isnan(study_stats.interval([0.3])[1])


def test_paired_differences_use_the_seeds_both_have():
    method = {0: {"exact_match": 0.5}, 1: {"exact_match": 0.7}, 2: {"exact_match": 0.6}}
    reference = {0: {"exact_match": 0.4}, 1: {"exact_match": 0.5}}
    mean, half = study_stats.paired(method, reference, "exact_match")
    assert mean == pytest.approx(0.15) and half == pytest.approx(
        stats.t.ppf(0.975, 1) * (0.1 / math.sqrt(2)) / math.sqrt(2)
    )


def test_summary_rows_compare_with_reference_and_control_but_not_themselves():
    final = {
        "reference": {0: {"exact_match": 0.1}, 1: {"exact_match": 0.2}},
        "dpo": {0: {"exact_match": 0.3}, 1: {"exact_match": 0.5}},
        "sft": {0: {"exact_match": 0.2}, 1: {"exact_match": 0.2}},
    }
    rows = {r["method"]: r for r in study_stats.summary_rows(final, control="sft")}
    assert rows["dpo"]["exact_match_vs_reference"][0] == pytest.approx(0.25)
    assert rows["dpo"]["exact_match_vs_control"][0] == pytest.approx(0.2)
    assert "exact_match_vs_reference" not in rows["reference"] and "exact_match_vs_control" not in rows["sft"]
    table = study_stats.markdown(list(rows.values()), ("exact_match",))
    assert "| dpo | 2 | 0.400 ± " in table and "| +0.250 ± " in table


def test_answer_length_and_each_familys_exact_match_are_study_metrics_after_the_fixed_ones():
    def scores(em: float, add: float, tokens: float) -> dict:
        return {
            "exact_match": em,
            "exact_match[add_digits]": add,
            "exact_match[copy]": 2 * em - add,
            "answer_tokens": tokens,
            "train_seconds": 60.0,
        }

    final = {
        "reference": {0: scores(0.2, 0.1, 9.0), 1: scores(0.3, 0.2, 10.0)},
        "nca": {0: scores(0.5, 0.6, 8.0), 1: scores(0.6, 0.8, 7.0)},
    }
    rows = study_stats.summary_rows(final, control=None)
    metrics = study_stats.present_metrics(rows)
    assert metrics == ("exact_match", "answer_tokens", "exact_match[add_digits]", "exact_match[copy]")
    nca = rows[1]
    assert nca["exact_match[add_digits]"][0] == pytest.approx(0.7) and nca["answer_tokens"][0] == pytest.approx(7.5)
    assert nca["exact_match[copy]_vs_reference"][0] == pytest.approx(0.05)  # (0.4 - 0.3 + 0.4 - 0.4) / 2
    claims = study_stats.claim_rows(final, [StudyClaim(claim="x", better="nca", than="reference")], "exact_match")
    assert claims[0]["answer_tokens"][0] == pytest.approx(-2.0) and "train_seconds" not in claims[0]
    assert "| method | seeds | exact_match | answer_tokens | exact_match[add_digits] | exact_match[copy] |" in (
        study_stats.markdown(rows, metrics)
    )


def test_a_claim_holds_only_when_its_interval_lies_above_zero():
    better = {0: {"exact_match": 0.30}, 1: {"exact_match": 0.32}, 2: {"exact_match": 0.34}}
    consistent = {s: {"exact_match": v["exact_match"] - 0.1} for s, v in better.items()}
    noisy = {0: {"exact_match": 0.10}, 1: {"exact_match": 0.50}, 2: {"exact_match": 0.30}}
    final = {"a": better, "b": consistent, "c": noisy, "one": {0: {"exact_match": 0.1}}}

    def claim(b: str, t: str) -> dict:
        return study_stats.claim_rows(final, [StudyClaim(claim="x", better=b, than=t)], "exact_match")[0]

    assert claim("a", "b")["verdict"] == "holds" and claim("a", "b")["exact_match"][0] == pytest.approx(0.1)
    assert claim("b", "a")["verdict"] == "reversed"
    assert claim("a", "c")["verdict"].startswith("not shown")
    assert claim("a", "one")["verdict"] == "one seed: no interval"
    table = study_stats.claims_markdown([claim("a", "b")], ("exact_match",), "exact_match")
    assert "| x (a − b) | +0.100 ± 0.000 | holds |" in table
    assert study_stats.cell((math.nan, math.nan), signed=True) == "n/a"  # nothing counted, not "+nan"
    # --quick with quick_methods runs only some methods: a claim naming one that did not run has no row
    both = [StudyClaim(claim="y", better="a", than="b"), StudyClaim(claim="z", better="a", than="not run")]
    assert [row["claim"] for row in study_stats.claim_rows(final, both, "exact_match")] == ["y"]


def test_a_claim_naming_an_unknown_method_is_refused(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        json.dumps(
            {
                "base": "configs/tiny.yaml",
                "methods": [{"name": "dpo"}, {"name": "swepo"}],
                "claims": [{"claim": "SWEPO > DPO", "better": "swepo", "than": "dop"}],
            }
        )
    )
    with pytest.raises(ConfigError, match="'dop'"):
        load_study(path)


def test_the_study_table_has_its_rows_claims_and_the_best_method_on_validation(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        json.dumps(
            {
                "base": "configs/tiny.yaml",
                "choose_method": True,
                "control": "sft",
                "methods": [{"name": "dpo", "grid": {"train.beta": [0.1, 0.3]}}, {"name": "sft"}],
                "claims": [{"claim": "DPO > SFT", "better": "dpo", "than": "sft"}],
            }
        )
    )
    study = load_study(path)
    final = {
        "reference": {0: {"exact_match": 0.1}, 1: {"exact_match": 0.2}},
        "dpo": {0: {"exact_match": 0.3}, 1: {"exact_match": 0.4}},
        "sft": {0: {"exact_match": 0.1}, 1: {"exact_match": 0.2}},
    }
    chosen = {"dpo": {"train.beta": 0.3}, "sft": {}}
    validation = {
        "dpo": {"beta=0.1": {"exact_match": 0.5}, "beta=0.3": {"exact_match": 0.6}},
        "sft": {"default": {"exact_match": 0.7}},
    }
    table, rows, claims, best = study_table(study, final, chosen, validation)
    # the best method compares each method at its chosen point: sft's 0.7 beats dpo's chosen 0.6
    assert best == "sft" and "**sft** (default)" in table
    assert claims[0]["verdict"] == "holds" and claims[0]["exact_match"] == pytest.approx((0.2, 0.0))
    assert [r["method"] for r in rows] == [
        "reference",
        "dpo",
        "sft",
    ] and "| DPO > SFT (dpo − sft) | +0.200 ± 0.000 |" in table
    _, _, _, none = study_table(study, final, chosen, {"dpo": validation["dpo"]})  # --quick scores no single points
    assert none is None


def test_choose_takes_the_best_validation_point_then_the_tie_break_then_the_first():
    scores = {"lr=1e-4": {"exact_match": 0.2}, "lr=3e-4": {"exact_match": 0.4}, "lr=1e-3": {"exact_match": 0.4}}
    assert study_stats.choose(scores, "exact_match") == "lr=3e-4"
    scores["lr=1e-3"]["mean_reward"] = 0.1
    assert study_stats.choose(scores, "exact_match") == "lr=1e-3"
    with pytest.raises(ValueError, match="mean_reward"):
        study_stats.choose(scores, "mean_reward")


def test_grid_points_are_every_combination():
    points = grid_points({"train.lr": [1e-4, 3e-4], "train.beta": [0.1, 0.3, 1.0]})
    assert (
        len(points) == 6
        and points[0] == {"train.lr": 1e-4, "train.beta": 0.1}
        and points[-1] == {"train.lr": 3e-4, "train.beta": 1.0}
    )
    assert grid_points({}) == [{}]


def test_validation_prompts_are_carved_from_training_and_never_trained_on():
    cfg = load_config(ROOT / "configs/tiny.yaml", ["task.n_validation=40"])
    plain = load_config(ROOT / "configs/tiny.yaml")
    train, heldout = task.splits(cfg.seed, cfg.task)
    everything, same_heldout = task.splits(plain.seed, plain.task)
    validation = task.validation(cfg.seed, cfg.task)
    assert len(train) == len(everything) - 40 and len(validation) == 40 and heldout == same_heldout
    assert {r["prompt"] for r in train} | {r["prompt"] for r in validation} == {r["prompt"] for r in everything}
    assert not {r["prompt"] for r in validation} & ({r["prompt"] for r in train} | {r["prompt"] for r in heldout})
    assert all(task.exact_match(r["prompt"], r["response"]) for r in validation)  # exact answers, never the slip
    assert task.scored_split(cfg.seed, cfg.task, "heldout") == heldout
    with pytest.raises(ValueError, match="n_validation is 0"):
        task.validation(plain.seed, plain.task)


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_shipped_studies_load_and_every_run_config_validates(path):
    study = load_study(path)  # validates every method x grid point, quick and full
    assert study.methods and study.output_dir == f"runs/studies/{path.stem}"
    assert (ROOT / study.base).is_file()


def test_the_demo_trains_what_study_a_chose_on_validation():
    """README "Method studies": study (a) chose NCA at T = 1 on its validation split (3 seeds, 2026-11-29)."""
    study = load_study(ROOT / "configs/studies/imperfect_demonstrator.yaml")
    nca = next(m for m in study.methods if m.name == "nca")
    chosen = run_config(study, nca, {"train.temperature": 1.0}, seed=0, quick=False)
    demo = load_config(ROOT / "configs/toy_demo.yaml")
    cadence = {"checkpoint_every", "log_every"}  # neither changes what is trained
    assert chosen.train.model_dump(exclude=cadence) == demo.train.model_dump(exclude=cadence)
    for section in ("model", "sft", "prepare"):
        assert getattr(chosen, section) == getattr(demo, section), section
    # the study carves its validation prompts off the demo's training prompts
    assert chosen.task.model_copy(update={"n_validation": 0}) == demo.task


def test_the_real_model_demo_trains_what_the_self_samples_study_chose_on_validation():
    """README "Method studies on a real model": on SmolLM2's own samples, study (f) chose InfoNCA at K = 8 on its
    validation split (seed 0, 2026-12-02)."""
    study = load_study(ROOT / "configs/studies/self_samples.yaml")
    assert study.choose_method and study.base == "configs/demo.yaml"
    method = next(m for m in study.methods if m.name == "infonca K=8")
    chosen = run_config(study, method, grid_points(method.grid)[0], seed=0, quick=False)
    demo = load_config(ROOT / "configs/demo.yaml")
    assert chosen.train.model_dump(exclude={"checkpoint_every", "log_every"}) == demo.train.model_dump(
        exclude={"checkpoint_every", "log_every"}
    )
    for section in ("model", "prepare"):
        assert getattr(chosen, section) == getattr(demo, section), section
    assert chosen.task.model_copy(update={"n_validation": 0}) == demo.task


def test_a_wrong_key_in_a_study_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        json.dumps({"base": "configs/tiny.yaml", "methods": [{"name": "dpo", "set": {"train.los": "dpo"}}]})
    )
    with pytest.raises(ConfigError, match="train.los"):
        load_study(path)
    path.write_text(json.dumps({"base": "configs/tiny.yaml", "methods": [{"name": "dpo", "sett": {}}]}))
    with pytest.raises(ConfigError, match="methods.0.sett"):
        load_study(path)


@pytest.mark.parametrize(
    "method, name",
    [
        ({"name": "..", "set": {"train.loss": "dpo"}}, "method name"),
        ({"name": "dpo/../../x", "set": {"train.loss": "dpo"}}, "method name"),
        ({"name": "dpo", "grid": {"train.lr": ["../../../home"]}}, "grid value of train.lr"),
    ],
)
def test_a_method_name_or_grid_value_that_would_leave_the_study_directory_is_refused(tmp_path, method, name):
    # a run's directory is <study>/<seed>/<method>/<key>=<value>, and training replaces its policy/ there
    path = tmp_path / "escape.yaml"
    path.write_text(json.dumps({"base": "configs/tiny.yaml", "methods": [method]}))
    with pytest.raises(ConfigError, match=name):
        load_study(path)
    path.write_text(json.dumps({"name": "..", "base": "configs/tiny.yaml", "methods": [{"name": "dpo"}]}))
    with pytest.raises(ConfigError, match="study name"):
        load_study(path)


def test_run_config_layers_study_method_point_and_seed(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        json.dumps(
            {
                "base": "configs/tiny.yaml",
                "set": {"train.steps": 6},
                "seeds": [3],
                "quick": {"train.steps": 2},
                "validation_prompts": 30,
                "methods": [{"name": "dpo", "set": {"train.loss": "dpo"}, "grid": {"train.lr": [1e-4, 1e-3]}}],
            }
        )
    )
    study = load_study(path)
    full = run_config(study, study.methods[0], {"train.lr": 1e-3}, 3, quick=False)
    quick = run_config(study, study.methods[0], {"train.lr": 1e-3}, 3, quick=True)
    assert (full.train.loss, full.train.lr, full.train.steps, full.seed, full.task.n_validation) == (
        "dpo",
        1e-3,
        6,
        3,
        30,
    )
    assert quick.train.steps == 2


def test_studies_sharing_a_cache_share_reference_and_shards_but_not_runs(tmp_path):
    def placed(study: str, seed: int, *sets: str):
        cfg = load_config(ROOT / "configs/tiny.yaml", [f"seed={seed}", *sets])
        return Path(place_run(cfg, tmp_path / study, tmp_path / "cache", seed).output_dir)

    a, b = placed("a", 0), placed("b", 0)
    assert a != b and a.parent.parent == tmp_path / "a"
    assert (a / "sft").resolve() == (b / "sft").resolve() and (a / "prepare").resolve() == (b / "prepare").resolve()
    assert (a / "sft").resolve().parent == tmp_path / "cache" / "seed0"
    other_prepare = placed("a", 0, "prepare.max_rows=17")
    assert (other_prepare / "sft").resolve() == (a / "sft").resolve()
    assert (other_prepare / "prepare").resolve() != (a / "prepare").resolve()
    assert (placed("a", 1) / "sft").resolve() != (a / "sft").resolve()
    # a study moved apart from its cache: its links are repointed, not a FileExistsError
    (tmp_path / "moved").mkdir()
    os.rename(tmp_path / "a", tmp_path / "moved" / "a")
    moved = Path(
        place_run(
            load_config(ROOT / "configs/tiny.yaml", ["seed=0"]), tmp_path / "moved" / "a", tmp_path / "cache", 0
        ).output_dir
    )
    assert (moved / "sft").resolve() == (b / "sft").resolve() and (moved / "prepare").resolve() == (
        b / "prepare"
    ).resolve()


def test_an_interrupted_invocation_counts_towards_the_study_wall_time(tmp_path, monkeypatch):
    """Only invocations that finished were counted: a study stopped by Ctrl-C or a failure lost that time."""
    shipped = load_study(ROOT / "configs/studies/rpo.yaml")
    shipped.output_dir = str(tmp_path)
    invocation = iter([KeyboardInterrupt, {"study": "rpo"}])

    def interrupted_then_finished(*_):
        time.sleep(0.2)
        outcome = next(invocation)
        if outcome is KeyboardInterrupt:
            raise outcome
        return outcome

    monkeypatch.setattr(study, "_study", interrupted_then_finished)
    with pytest.raises(KeyboardInterrupt):
        study.run_study(shipped)
    report = study.run_study(shipped)
    assert len(report["invocation_seconds"]) == 2 and min(report["invocation_seconds"]) >= 0.2
    assert report["wall_seconds"] == sum(report["invocation_seconds"])
    assert json.loads((tmp_path / "full" / "report.json").read_text())["wall_seconds"] == report["wall_seconds"]


def test_the_first_seeds_test_run_is_its_validation_run_not_a_second_training(tmp_path, monkeypatch):
    """The chosen point at the first seed was trained twice, for validation and for the test table: 8 of study (a)'s
    36 trainings. Trained once, it is scored on each split; a resumed study trains and scores nothing again."""
    shipped = load_study(ROOT / "configs/studies/imperfect_demonstrator.yaml")
    shipped.output_dir, shipped.cache_dir, shipped.seeds = str(tmp_path / "out"), str(tmp_path / "cache"), [0, 1]
    trainings, scorings = [], []

    def train(cfg, job):
        trainings.append((cfg.seed, job))
        cfg.job_dir(job).mkdir(parents=True)
        return {
            "policy_dir": str(cfg.job_dir(job) / "policy"),
            "heldout_accuracy_end": 0.5 + 0.01 * len(trainings),
            "wall_seconds": 1.0,
        }

    def score(cfg, model_dir, split):
        scorings.append((cfg.seed, model_dir.parent.name, model_dir.parent.parent.name, split))
        return {"exact_match": 0.3 if "0.0001" in model_dir.parent.name else 0.1, "mean_reward": 0.0, "slip_rate": 0.0}

    monkeypatch.setattr(study, "run_train", train)
    monkeypatch.setattr(study, "_scores", score)
    monkeypatch.setattr(study, "_data_ready", lambda cfg: None)
    monkeypatch.setattr(
        study, "reference_scores", lambda *_: {"exact_match": 0.0, "mean_reward": 0.0, "slip_rate": 0.0}
    )
    report = study._study(shipped, Path(shipped.output_dir) / "full", quick=False)
    points = sum(len(grid_points(m.grid)) for m in shipped.methods)
    assert (
        len(trainings) == points + len(shipped.methods) == len(set(trainings))
    )  # seed 0: the grid; seed 1: the chosen
    assert report["chosen"]["nca"] == "temperature=0.0001"
    nca0 = [s for s in scorings if s[:3] == (0, "temperature=0.0001", "nca")]
    assert [s[3] for s in nca0] == ["validation", "heldout"]
    assert (
        report["final"]["nca"]["0"]["implicit_accuracy"]
        == report["validation"]["nca"]["temperature=0.0001"]["implicit_accuracy"]
    )
    before = (len(trainings), len(scorings))
    assert study._study(shipped, Path(shipped.output_dir) / "full", quick=False)["final"] == report["final"]
    assert (len(trainings), len(scorings)) == before


def test_quick_trains_what_the_claims_compare_and_the_control_and_prepares_only_their_data(tmp_path, monkeypatch):
    """--quick of study (e) trained and prepared all five negative types (about 15 min); it is for trying a study."""
    shipped = load_study(ROOT / "configs/studies/cpo.yaml")
    shipped.output_dir, shipped.cache_dir = str(tmp_path / "out"), str(tmp_path / "cache")
    trained, prepared = [], set()

    def train(cfg, job):
        trained.append(job.split("/")[0])
        cfg.job_dir(job).mkdir(parents=True)
        return {"policy_dir": str(cfg.job_dir(job) / "policy"), "heldout_accuracy_end": 0.6, "wall_seconds": 1.0}

    monkeypatch.setattr(study, "run_train", train)
    monkeypatch.setattr(study, "_scores", lambda *_: {"exact_match": 0.1, "mean_reward": 0.0, "slip_rate": 0.0})

    def data_ready(cfg):
        prepared.add(cfg.prepare.negatives.model_dump_json())
        (cfg.job_dir("sft") / "model").mkdir(parents=True, exist_ok=True)
        (cfg.job_dir("sft") / "model" / "config.json").write_text("{}")

    monkeypatch.setattr(study, "_data_ready", data_ready)
    monkeypatch.setattr(study, "heldout_margins", lambda *_: (0.5, {}))
    report = study._study(shipped, tmp_path / "out" / "quick", quick=True)
    compared = {"mixture", "mle", "mixture alpha 0", "mixture ranked"}
    assert set(trained) == compared == set(report["final"]) - {"reference"} and len(trained) == 4
    assert len(prepared) == 1 and '"autoregressive":1,"meanfield":1,"truncation":1' in prepared.pop()
    assert [m.name for m in load_study(ROOT / "configs/studies/cpo.yaml").methods_run(quick=False)][:4] == [
        "AN",
        "MN",
        "TN",
        "BN",
    ]


def test_quick_methods_name_what_quick_trains_and_must_be_methods(tmp_path):
    study = load_study(ROOT / "configs/studies/self_samples.yaml")
    assert [m.name for m in study.methods_run(quick=True)] == study.quick_methods
    assert len(study.methods_run(quick=False)) == len(study.methods) > len(study.quick_methods)
    path = tmp_path / "bad.yaml"
    path.write_text(
        json.dumps({"base": "configs/tiny.yaml", "methods": [{"name": "dpo"}], "quick_methods": ["dpo", "nca"]})
    )
    with pytest.raises(ConfigError, match=r"quick_methods names \['nca'\], not among the methods \['dpo'\]"):
        load_study(path)


@pytest.mark.slow
def test_a_tiny_study_chooses_on_validation_runs_every_seed_and_resumes(tmp_path):
    """The runner for real (SFT, prepare, train, evaluate per run) on the tiny config: 2 seeds, a grid of 2."""
    import subprocess
    import sys

    path = tmp_path / "tiny_study.yaml"
    path.write_text(
        json.dumps(
            {
                "base": "configs/tiny.yaml",
                "output_dir": str(tmp_path / "out"),
                "cache_dir": str(tmp_path / "cache"),
                "seeds": [0, 1],
                "validation_prompts": 24,
                "set": {"train.steps": 4, "train.checkpoint_every": 4, "evaluate.max_new_tokens": 8},
                "control": "sft",
                "methods": [
                    {"name": "dpo", "set": {"train.loss": "dpo"}, "grid": {"train.lr": [1.0e-4, 1.0e-3]}},
                    {"name": "sft", "set": {"train.loss": "sft"}},
                ],
                "claims": [{"claim": "DPO > SFT", "better": "dpo", "than": "sft"}],
                "choose_method": True,
            }
        )
    )

    def study() -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "jobs.study", "--config", str(path)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=3000,
        )

    proc = study()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "full" / "report.json").read_text())
    assert set(report["validation"]["dpo"]) == {"lr=0.0001", "lr=0.001"}
    assert set(report["validation"]["sft"]) == {"default"}
    assert report["chosen"]["dpo"] == study_stats.choose(report["validation"]["dpo"], "exact_match")
    at_chosen = {m: report["validation"][m][p] for m, p in report["chosen"].items()}
    assert report["best_method"] == study_stats.choose(at_chosen, "exact_match")
    assert set(report["final"]) == {"reference", "dpo", "sft"} and all(
        set(v) == {"0", "1"} for v in report["final"].values()
    )
    rows = {r["method"]: r for r in report["rows"]}
    # each row's interval is over its two seeds' held-out scores, and the paired differences over the same seeds
    dpo = [report["final"]["dpo"][s]["exact_match"] for s in ("0", "1")]
    assert rows["dpo"]["exact_match"] == pytest.approx(list(study_stats.interval(dpo)))
    ref = [report["final"]["reference"][s]["exact_match"] for s in ("0", "1")]
    assert rows["dpo"]["exact_match_vs_reference"][0] == pytest.approx(sum(dpo) / 2 - sum(ref) / 2)
    assert (
        "exact_match_vs_control" in rows["dpo"]
        and "| dpo | 2 |" in (tmp_path / "out" / "full" / "table.md").read_text()
    )
    dpo_vs_sft = [
        report["final"]["dpo"][s]["exact_match"] - report["final"]["sft"][s]["exact_match"] for s in ("0", "1")
    ]
    assert report["claims"][0]["exact_match"] == pytest.approx(list(study_stats.interval(dpo_vs_sft)))
    assert "| DPO > SFT (dpo − sft) |" in (tmp_path / "out" / "full" / "table.md").read_text()
    families = {f"exact_match[{f}]" for f in load_config(ROOT / "configs" / "tiny.yaml").task.families}
    assert families <= set(rows["dpo"]) and rows["dpo"]["answer_tokens"][0] > 0
    assert (tmp_path / "out" / "full" / "study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert proc.stdout.count("100% 40/40 steps") == 2, proc.stdout  # one SFT per seed, reused by all its runs
    # the seeds differ in data: their references are different models
    seeds = {s: next((tmp_path / "cache" / f"seed{s}").glob("sft-*")) for s in (0, 1)}
    assert (seeds[0] / "model" / "model.safetensors").read_bytes() != (
        seeds[1] / "model" / "model.safetensors"
    ).read_bytes()
    again = study()  # every run's scores are kept: nothing is trained again
    again_report = json.loads((tmp_path / "out" / "full" / "report.json").read_text())
    assert again.returncode == 0 and "[study] dpo (" not in again.stdout and again_report["final"] == report["final"]
    assert (
        again_report["invocation_seconds"][0] == report["wall_seconds"] and len(again_report["invocation_seconds"]) == 2
    )


@pytest.mark.slow
def test_the_library_sft_keeps_its_report_so_a_second_call_reuses_the_model(tmp_path):
    """A study (or compare) calls orchestration.sft.run_sft, not the job: it reused nothing before the report was
    kept."""
    import ray

    from orchestration.sft import run_sft

    cfg = load_config(ROOT / "configs/tiny.yaml", [f"output_dir={tmp_path}", "sft.steps=2", "ray.num_cpus=2"])
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        first = run_sft(cfg)
        again = run_sft(cfg)
    finally:
        ray.shutdown()
    assert not first["reused"] and again["reused"] and again["model_dir"] == first["model_dir"]


def test_on_the_users_data_every_method_is_scored_on_one_set_of_test_rows_whatever_its_groups(tmp_path, monkeypatch):
    """RPO's related (neighbours) and random groups split their held-out groups differently: scored on the trainer's
    held-out groups, the two would be compared on different prompts. With data.test_fraction every method of a
    seed is scored on the same prepared test rows (one prompt per group), and chooses on the trainer's held-out
    groups of training rows (validation)."""
    shipped = load_study(ROOT / "configs/studies/rpo_hh_harmless.yaml")
    shipped.output_dir, shipped.cache_dir, shipped.seeds = str(tmp_path / "out"), str(tmp_path / "cache"), [0, 1]
    shipped.methods[0].grid = {"train.lr": [1e-3, 3e-4]}  # a grid: validation runs too
    shipped.set["model.cache_dir"] = str(tmp_path / "models")  # a clean machine has converted no model
    method = shipped.methods[0]
    converted = run_config(shipped, method, grid_points(method.grid)[0], 0, False).gguf_model_dir()
    converted.mkdir(parents=True)
    (converted / "config.json").write_text("{}")
    prepared, scored = [], []

    def train(cfg, job):
        cfg.job_dir(job).mkdir(parents=True)
        return {
            "policy_dir": str(cfg.job_dir(job) / "policy"),
            "heldout_accuracy_end": 0.7 if "0.0003" in job else 0.6,
            "heldout_lc_accuracy_end": 0.55,
            "wall_seconds": 1.0,
        }

    def prepare(cfg):
        prepared.append((cfg.seed, cfg.data.rows, cfg.prepare.grouping.method, cfg.prepare.grouping.group_size))

    def score(model_dir, cfg, test):
        scored.append((cfg.seed, cfg.prepare.grouping.method, Path(test.output_dir).resolve()))
        return {"implicit_accuracy": 0.5 if model_dir == cfg.policy_dir() else 0.6, "lc_accuracy": 0.5}

    monkeypatch.setattr(study, "run_train", train)
    monkeypatch.setattr(study, "run_prepare", prepare)
    monkeypatch.setattr(study, "preference_scores_on_test_rows", score)
    monkeypatch.setattr(  # the configured reward (none on HH pairs) scores answers on validation, not on test
        study, "_scores", lambda cfg, model_dir, split: {} if split == "validation" else pytest.fail(split)
    )
    report = study._study(shipped, Path(shipped.output_dir) / "full", quick=False)
    assert report["chosen"]["dpo"] == "lr=0.0003"
    assert report["validation"]["dpo"]["lr=0.0003"] == {
        "implicit_accuracy": 0.7,
        "lc_accuracy": 0.55,
        "train_seconds": 1.0,
        "score_seconds": report["validation"]["dpo"]["lr=0.0003"]["score_seconds"],
    }
    for seed in (0, 1):
        tests = {where for s, _, where in scored if s == seed}
        assert len(tests) == 1  # reference, related and random groups: one test set
        assert {m for s, m, _ in scored if s == seed} == {"neighbors", "random"}
        assert (seed, "test", "random", 1) in prepared
    assert {k for k, v in report["final"]["rpo embedding random"]["1"].items() if "accuracy" in k} == {
        "implicit_accuracy",
        "lc_accuracy",
    }
    assert report["final"]["reference"]["0"]["implicit_accuracy"] == 0.5


def test_a_study_whose_test_side_is_empty_stops_before_it_trains_anything(tmp_path, monkeypatch):
    """The test rows are prepared for every seed first: a source whose rows all fall on the training side of
    data.test_fraction is refused by prepare (it names the side) before any run trains."""
    shipped = load_study(ROOT / "configs/studies/rpo_hh_harmless.yaml")
    shipped.output_dir, shipped.cache_dir, shipped.seeds = str(tmp_path / "out"), str(tmp_path / "cache"), [0, 1]
    shipped.set["model.cache_dir"] = str(tmp_path / "models")
    method = shipped.methods[0]
    converted = run_config(shipped, method, grid_points(method.grid)[0], 0, False).gguf_model_dir()
    converted.mkdir(parents=True)
    (converted / "config.json").write_text("{}")

    def prepare(cfg):
        if cfg.data.rows == "test" and cfg.seed == 1:
            raise SourceError("no valid rows on the test side of data.test_fraction", path=cfg.data.source)

    monkeypatch.setattr(study, "run_prepare", prepare)
    monkeypatch.setattr(study, "run_train", lambda cfg, job: pytest.fail(f"{job} trained before the test rows"))
    with pytest.raises(SourceError, match="test side"):
        study._study(shipped, Path(shipped.output_dir) / "full", quick=False)
