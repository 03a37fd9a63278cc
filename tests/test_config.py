"""Typed configs: every shipped file validates; bad keys, types and values are named with the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from configs.base import ConfigError
from configs.schema import Config, field_reference, load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    cfg = load_config(path)
    assert cfg.name == path.stem
    assert cfg.output_dir.endswith(f"runs/{path.stem}")  # cluster_example: on the cluster's shared filesystem


def _write(tmp_path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, needle",
    [
        ("sft:\n  stepz: 3\n", "unknown key 'sft.stepz'"),
        ("bogus: 1\n", "unknown key 'bogus'"),
        ("sft:\n  steps: many\n", "key 'sft.steps'"),
        ("sft:\n  lr: -1\n", "key 'sft.lr'"),
        ("sft:\n  deepspeed:\n    zero_stage: 4\n", "key 'sft.deepspeed.zero_stage'"),
        ("data:\n  on_bad_row: ignore\n", "key 'data.on_bad_row'"),
        ("model:\n  hidden_size: 64\n  num_heads: 4\n", "head_dim"),
        ("- a\n- b\n", "top level must be a mapping"),
        ("sft: [1, 2\n", "not valid YAML"),
        (
            "prepare:\n  negatives: {autoregressive: 4, meanfield: 1, keep_ground_truth: false}\n",
            "no negatives made from the ground truth (meanfield=1, truncation=1, batch=0)",
        ),
        (
            "prepare:\n  negatives: {autoregressive: 1, meanfield: 0, truncation: 0, keep_ground_truth: false}\n",
            "autoregressive >= 2 (it is 1)",
        ),
        (
            "prepare:\n  reward: none\n  negatives: {autoregressive: 4, meanfield: 0, truncation: 0, "
            "keep_ground_truth: false}\n",
            "needs a reward that scores the samples, not reward='none'",
        ),
        ("data:\n  source: pairs.jsonl\n  rows: test\n", "data.test_fraction: 0 leaves empty"),
        ("data:\n  test_fraction: 0.2\n", "the embedded task has its own held-out split"),
    ],
)
def test_bad_config_names_key_and_file(tmp_path, text, needle):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert needle in str(err.value)
    assert str(path) in str(err.value)


def test_overrides_are_typed_and_validated(tmp_path):
    path = _write(tmp_path, "sft:\n  steps: 10\n")
    cfg = load_config(path, ["sft.steps=20", "sft.deepspeed.dtype=bf16", "data.source=x.jsonl"])
    assert (cfg.sft.steps, cfg.sft.deepspeed.dtype, cfg.data.source) == (20, "bf16", "x.jsonl")
    with pytest.raises(ConfigError, match="unknown key 'sft.nope'"):
        load_config(path, ["sft.nope=1"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(path, ["sft.steps"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_every_field_is_documented():
    rows = field_reference()
    assert len(rows) > 20
    undocumented = [key for key, _, doc in rows if not doc]
    assert not undocumented


def test_section_hash_tracks_only_named_sections():
    a, b = Config(), Config()
    b.ray.num_cpus = 7
    assert a.section_hash("model", "sft") == b.section_hash("model", "sft")
    b.sft.steps = 1
    assert a.section_hash("model", "sft") != b.section_hash("model", "sft")


def test_own_model_skips_the_toy_shape_rules_and_lora_validates(tmp_path):
    cfg = load_config(
        ROOT / "configs/tiny.yaml", ["model.policy_dir=/models/mine", "model.hidden_size=48", "model.num_heads=3"]
    )
    assert cfg.own_model and cfg.model.hidden_size == 48
    with pytest.raises(ConfigError, match="head_dim"):
        load_config(ROOT / "configs/tiny.yaml", ["model.hidden_size=48", "model.num_heads=3"])
    cfg = load_config(ROOT / "configs/tiny.yaml", ["train.lora.rank=4"])
    assert cfg.train.lora.rank == 4 and cfg.train.lora.target_modules == "all-linear"
    with pytest.raises(ConfigError, match="train.lora.dropout"):
        load_config(ROOT / "configs/tiny.yaml", ["train.lora.dropout=1.5"])
    with pytest.raises(FileNotFoundError, match="model.policy_dir"):
        load_config(ROOT / "configs/tiny.yaml", [f"model.policy_dir={tmp_path}"]).policy_dir()


def test_the_installed_command_runs_the_jobs():
    import subprocess
    import sys

    calign = Path(sys.executable).with_name("calign")
    assert calign.is_file(), "the package installs the calign command (pyproject [project.scripts])"
    helped = subprocess.run([calign, "--help"], capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and all(
        job in helped.stdout for job in ("prepare", "train", "evaluate", "run", "gpu-check")
    )
    doc = subprocess.run([calign, "config"], capture_output=True, text=True, timeout=120)
    assert doc.returncode == 0 and "| `train.pairing` |" in doc.stdout
    wrong = subprocess.run([calign, "fit"], capture_output=True, text=True, timeout=120)
    assert wrong.returncode == 2 and "usage: calign <job>" in wrong.stderr
