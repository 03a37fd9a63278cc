"""The typed configuration of every job, validated on load.

Each field is documented here, once, by its ``description``; ``python -m jobs.config_doc``
prints the whole reference. A YAML file is validated as a whole: an unknown key, a wrong
type or an out-of-range value raises :class:`ConfigError` naming the key and the file.
Command-line overrides (``--set sft.lr=1e-3``) are applied before validation, so they get
the same checks.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator

from configs.base import ConfigError, Section, check_location, is_uri, resolve_dtype
from configs.data import EMBEDDED_GGUF, DataConfig, ModelConfig, TaskConfig
from configs.prepare import PrepareConfig
from configs.runtime import EvaluateConfig, RayConfig, StorageConfig, TrackingConfig
from configs.train import SFTConfig, TrainConfig


class Config(Section):
    name: str = Field(default="", description="Run name; defaults to the config file's stem.")
    output_dir: str = Field(
        default="",
        description="Where jobs write results: a local path, or an object store (s3://bucket/prefix, gs://...) "
        "on a cluster whose nodes share no file system; defaults to runs/<name>.",
    )
    seed: int = Field(default=0, description="Seed of data generation, model initialisation and sampling.")
    task: TaskConfig = Field(default_factory=TaskConfig, description="The embedded default task.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The from-scratch reference model.")
    sft: SFTConfig = Field(default_factory=SFTConfig, description="The SFT job that trains the reference model.")
    data: DataConfig = Field(
        default_factory=DataConfig, description="Where preference data comes from and how bad rows are handled."
    )
    prepare: PrepareConfig = Field(
        default_factory=PrepareConfig, description="The prepare job (Ray Data stages to shards)."
    )
    train: TrainConfig = Field(default_factory=TrainConfig, description="The preference training job.")
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig, description="The evaluate job.")
    ray: RayConfig = Field(default_factory=RayConfig, description="Ray cluster settings.")
    tracking: TrackingConfig = Field(
        default_factory=TrackingConfig, description="Experiment trackers that receive the metrics."
    )
    storage: StorageConfig = Field(default_factory=StorageConfig, description="Object-store endpoint and credentials.")

    _location = field_validator("output_dir")(check_location)

    def section_hash(self, *sections: str) -> str:
        """A stable hash of the named sections (plus the seed), used to decide whether an artifact can be reused."""
        payload = {"seed": self.seed, **{s: getattr(self, s).model_dump(mode="json") for s in sections}}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def vllm_dtype(self) -> str:
        """vLLM's precision setting: ``model.vllm_dtype``, or ``model.dtype`` where that says 'auto'."""
        return self.model.dtype if self.model.vllm_dtype == "auto" else self.model.vllm_dtype

    def reference_dtype(self) -> str:
        """The precision of the reference log-probs prepare stores: ``model.dtype`` on the model actors' devices."""
        return resolve_dtype(self.model.dtype, self.prepare.model_actor_gpus > 0)

    def train_dtype(self) -> str:
        """The precision training and held-out scoring compute in: ``train.deepspeed.dtype`` on the workers' devices."""
        return resolve_dtype(self.train.deepspeed.dtype, self.train.gpus_per_worker > 0)

    def pack_row_tokens(self) -> int:
        """Tokens per packed row of the trainer's and the reference scorer's forward passes."""
        return self.train.pack_tokens or 2 * self.model.max_length

    def local_dir(self) -> Path:
        """The local directory of this run's files: ``output_dir``, or the staging directory when that is a URI."""
        if not is_uri(self.output_dir):
            return Path(self.output_dir)
        return Path(self.storage.staging_dir or Path("runs") / "staged" / self.name)

    def job_dir(self, job: str) -> Path:
        """The local directory of ``job``'s files (``pipeline.storage.job_store`` is where they end up)."""
        return self.local_dir() / job

    @property
    def own_model(self) -> bool:
        """Whether the policy is a pretrained model (``model.policy_dir`` or ``model.gguf_file``) rather than the toy
        model of jobs.sft."""
        return self.model.policy_dir is not None or self.model.gguf_file is not None

    def gguf_model_dir(self) -> Path:
        """Where ``model.gguf_file``'s converted directory lives (named by the packaged model or the file's stem)."""
        g = self.model.gguf_file
        return Path(self.model.cache_dir) / (g if g in EMBEDDED_GGUF else Path(g).stem)

    def policy_dir(self) -> Path:
        """Where the reference policy lives: the user's model (a directory, or a converted GGUF file), or the model
        the SFT job saved."""
        if self.model.gguf_file is not None:
            path = self.gguf_model_dir()
        else:
            path = Path(self.model.policy_dir or self.job_dir("sft") / "model")
        if not (path / "config.json").is_file():
            hint = (
                "check model.policy_dir"
                if self.model.policy_dir
                else "the jobs convert model.gguf_file first"
                if self.model.gguf_file
                else "run `python -m jobs.sft --config ...` first or set model.policy_dir"
            )
            raise FileNotFoundError(f"reference policy {path} not found ({hint})")
        return path


def field_reference(model: type[BaseModel] = None, prefix: str = "") -> list[tuple[str, str, str]]:
    """``(dotted key, default, description)`` for every field: the one place fields are documented."""
    model = model or Config
    rows = []
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        sections = [
            t for t in (info.annotation, *get_args(info.annotation)) if isinstance(t, type) and issubclass(t, BaseModel)
        ]
        if sections and info.annotation is not sections[0]:
            # an optional section (null turns it off): its own row, then its fields
            rows.append((key, json.dumps(info.get_default(call_default_factory=True)), info.description or ""))
        if sections:
            rows += field_reference(sections[0], f"{key}.")
        else:
            default = info.get_default(call_default_factory=True)
            rows.append((key, json.dumps(default), info.description or ""))
    return rows


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: '{key}' is not a section")
        node = child
    node[keys[-1]] = value


def format_errors(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key '{key}'")
        else:
            lines.append(f"{source}: key '{key}': {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load and validate a YAML config; ``overrides`` are ``dotted.key=value`` strings (value parsed as YAML)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. sft.lr=1e-3")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), yaml.safe_load(raw))
    source = f"{path}" + (f" (with --set {' '.join(overrides)})" if overrides else "")
    try:
        cfg = Config.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc, source)) from None
    if not cfg.name:
        cfg.name = path.stem
    if not cfg.output_dir:
        cfg.output_dir = str(Path("runs") / cfg.name)
    return cfg
