"""The records hash changes with every file a setting names, and with the reference's precision, and reads an
unchanged file once."""

from __future__ import annotations

import os
import shutil
import sys

import pytest

from configs.base import ConfigError
from configs.schema import load_config
from orchestration.records_hash import records_hash
from pipeline import shards
from tests.conftest import ROOT


def _cfg(model_dir, *overrides):
    return load_config(ROOT / "configs/tiny.yaml", [f"model.policy_dir={model_dir}", *overrides])


def _touch_later(path):
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


@pytest.mark.parametrize("what", ["chat_template", "reward_model", "scorer", "embedder"])
def test_editing_a_file_a_setting_names_in_place_changes_the_records_hash(tiny_model_dir, tmp_path, monkeypatch, what):
    template = tmp_path / "template.jinja"
    template.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    reward = tmp_path / "reward"
    shutil.copytree(tiny_model_dir, reward)
    (tmp_path / "my_scorer.py").write_text("def score(prompt, response):\n    return 1.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_scorer", None)
    embedder = tmp_path / "embedder"
    embedder.mkdir()
    (embedder / "config.json").write_text("{}")
    setting, edited = {
        "chat_template": (f"data.chat_template={template}", template),
        "reward_model": (f"prepare.reward=model:{reward}", reward / "config.json"),
        "scorer": ("prepare.reward=my_scorer:score", tmp_path / "my_scorer.py"),
        "embedder": (f"prepare.embedder_dir={embedder}", embedder / "config.json"),
    }[what]
    cfg = _cfg(tiny_model_dir, setting)
    before = records_hash(cfg, str(tiny_model_dir))
    edited.write_text(edited.read_text() + "\n ")
    _touch_later(edited)
    assert records_hash(cfg, str(tiny_model_dir)) != before


def test_the_reference_precision_is_part_of_the_records_hash(tiny_model_dir):
    fp32 = records_hash(_cfg(tiny_model_dir), str(tiny_model_dir))
    assert records_hash(_cfg(tiny_model_dir, "model.dtype=bf16"), str(tiny_model_dir)) != fp32
    # 'auto' means bf16 on GPU model actors: moving them changes the log-probs, though it is a speed key
    gpu_auto = _cfg(tiny_model_dir, "prepare.model_actor_gpus=1")
    assert gpu_auto.reference_dtype() == "bf16" and records_hash(gpu_auto, str(tiny_model_dir)) != fp32


def test_an_unchanged_file_is_hashed_once_with_the_cache(tiny_model_dir, monkeypatch):
    cfg, cache, reads = _cfg(tiny_model_dir), {}, []
    real = shards.file_sha256
    monkeypatch.setattr(shards, "file_sha256", lambda path: reads.append(path) or real(path))
    first = records_hash(cfg, str(tiny_model_dir), cache)
    n = len(reads)
    assert n > 0 and records_hash(cfg, str(tiny_model_dir), cache) == first and len(reads) == n


def test_prepare_has_no_swepo_settings_of_its_own():
    """The trainer computes SWEPO's weights from the scores with train.swepo_*; prepare's copies were never read."""
    with pytest.raises(ConfigError, match="swepo_alpha"):
        load_config(ROOT / "configs/tiny.yaml", ["prepare.swepo_alpha=2"])
