"""A method study's YAML (``configs/studies/<name>.yaml``), typed like a run config (``configs/schema.py``).

Every run of a study is the ``base`` run config with ``set``, then the method's ``set``, then one point of the
method's ``grid`` applied as ``--set`` overrides; its seed, output directory and evaluation split are the study's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from configs.base import ConfigError, Section
from configs.schema import Config, format_errors, load_config


def path_part(text: str, what: str) -> str:
    """``text`` when it can name a directory inside the study (its runs are ``<method>/<key>=<value>,...``): no path
    separator, no NUL and not '.' or '..', so no setting can make a run write or delete outside the study."""
    if not text or text in (".", "..") or any(c in text for c in "/\\\0"):
        raise ValueError(
            f"{what} {text!r} names a run directory: it must not be empty, '.' or '..', nor hold '/', '\\' or NUL"
        )
    return text


class StudyMethod(Section):
    name: str = Field(description="Row name in the study's table (a method, or a variant of one).")
    set: dict[str, Any] = Field(
        default_factory=dict, description="Dotted config keys this method sets, e.g. {train.loss: dpo}."
    )
    grid: dict[str, list[Any]] = Field(
        default_factory=dict,
        description="Dotted key -> values tried on the validation split (every combination); the best is run on "
        "every seed.",
    )

    @field_validator("name")
    @classmethod
    def _name_is_a_path_part(cls, name: str) -> str:
        return path_part(name, "method name")

    @field_validator("grid")
    @classmethod
    def _grid_values_are_path_parts(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in grid.items():
            path_part(key, "grid key")
            for value in values:
                path_part(str(value), f"grid value of {key}")
        return grid


class StudyClaim(Section):
    claim: str = Field(description="A paper's claim in words, e.g. 'SWEPO > DPO x (k-1)'.")
    better: str = Field(description="The method the claim says is better (a method name of the study).")
    than: str = Field(description="The method it is compared with, seed by seed.")


class StudyConfig(Section):
    name: str = Field(default="", description="Study name; defaults to the file's stem.")
    base: str = Field(description="The run config every run starts from (a path, relative to the project root).")
    output_dir: str = Field(default="", description="Where the study writes; defaults to runs/studies/<name>.")
    cache_dir: str = Field(
        default="runs/studies/cache",
        description="Per seed, the reference models and prepared shards of the study's data settings; studies sharing "
        "it share those (the runs themselves stay in output_dir).",
    )
    set: dict[str, Any] = Field(default_factory=dict, description="Dotted config keys set for every run of the study.")
    seeds: list[int] = Field(
        default=[0, 1, 2],
        min_length=1,
        description="Seeds of the final runs: each has its own task data, initialisation and sampling.",
    )
    validation_prompts: int = Field(
        default=120,
        ge=10,
        description="Training prompts carved off as the validation split (task.n_validation) for the grid.",
    )
    select_by: Literal["exact_match", "mean_reward", "implicit_accuracy"] = Field(
        default="exact_match",
        description="The validation metric that chooses each method's grid point (higher is better).",
    )
    choose_method: bool = Field(
        default=False,
        description="Also score single-point methods on the validation split and name the best method there (a "
        "demo's default).",
    )
    control: str | None = Field(
        default=None,
        description="The method whose runs are the control of the paired differences, e.g. sft (null: none).",
    )
    methods: list[StudyMethod] = Field(min_length=1, description="The rows of the study.")
    claims: list[StudyClaim] = Field(
        default_factory=list,
        description="Paired comparisons the study answers: holds when the 95% interval of better − than on select_by "
        "lies above 0.",
    )
    quick: dict[str, Any] = Field(
        default_factory=dict,
        description="--quick: one seed, the first grid point of each method its claims compare and of the control "
        "(of every method when it has neither), and these dotted keys set.",
    )
    quick_methods: list[str] = Field(
        default_factory=list,
        description="--quick runs these methods instead of those the claims compare and the control (empty: those).",
    )

    @model_validator(mode="after")
    def _names(self) -> StudyConfig:
        names = [m.name for m in self.methods]
        if len(set(names)) != len(names) or "reference" in names:
            raise ValueError(f"method names must be unique and not 'reference': {names}")
        if self.control is not None and self.control not in names:
            raise ValueError(f"control {self.control!r} is not one of the methods {names}")
        for claim in self.claims:
            unknown = [n for n in (claim.better, claim.than) if n not in names]
            if unknown:
                raise ValueError(f"claim {claim.claim!r} names {unknown}, not among the methods {names}")
        unknown = [n for n in self.quick_methods if n not in names]
        if unknown:
            raise ValueError(f"quick_methods names {unknown}, not among the methods {names}")
        return self

    def seeds_run(self, quick: bool) -> list[int]:
        """The seeds a run trains: all, or with --quick the first."""
        return self.seeds[:1] if quick else self.seeds

    def methods_run(self, quick: bool) -> list[StudyMethod]:
        """The methods a run trains: all, or with --quick ``quick_methods``, else those its claims compare and the
        control (all when none)."""
        if not quick:
            return self.methods
        named = set(self.quick_methods) or {n for claim in self.claims for n in (claim.better, claim.than)} | {
            self.control
        }
        return [m for m in self.methods if m.name in named] or self.methods


def overrides(*layers: dict[str, Any]) -> list[str]:
    """``--set`` strings of the layers, later layers winning."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(layer)
    return [
        f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
        for k, v in merged.items()
    ]


def run_config(study: StudyConfig, method: StudyMethod, point: dict[str, Any], seed: int, quick: bool) -> Config:
    """The run config of one study run (before the study places its output)."""
    layers = [study.set, method.set, point, {"seed": seed, "task.n_validation": study.validation_prompts}]
    if quick:
        layers.insert(1, study.quick)
    return load_config(study.base, overrides(*layers))


def load_study(path: str | Path) -> StudyConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"study file not found: {path}")
    try:
        study = StudyConfig.model_validate(yaml.safe_load(path.read_text()) or {})
    except ValidationError as exc:
        raise ConfigError(format_errors(exc, str(path))) from None
    try:
        study.name = path_part(study.name or path.stem, "study name")
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    study.output_dir = study.output_dir or str(Path("runs") / "studies" / study.name)
    for method in study.methods:  # every key and value checked before the first run
        for point in grid_points(method.grid):
            run_config(study, method, point, study.seeds[0], quick=False)
            run_config(study, method, point, study.seeds[0], quick=True)
    return study


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, the first key varying slowest."""
    points: list[dict[str, Any]] = [{}]
    for key, values in grid.items():
        points = [{**p, key: v} for p in points for v in values]
    return points
