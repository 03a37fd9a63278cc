"""Every shipped config runs as written, end to end (`python -m jobs.run`), on a small slice: only the output
directory, the slice sizes and, where a config points at a model or data made by another command, those paths
are overridden. Slow (about 25 minutes in all); `make test-all` runs it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.conftest import ROOT, SHARED_DATA, run_job
from tests.zoo import save_own_model, write_task_as_chat

pytestmark = pytest.mark.slow

SLICE = [
    "prepare.max_rows=24",
    "train.steps=2",
    "train.checkpoint_every=2",
    "train.batch_groups=2",
    "train.micro_groups=1",
    "train.heldout_fraction=0.3",
    "evaluate.max_prompts=4",
    "evaluate.max_new_tokens=8",
]
TOY = ["sft.steps=10", "task.n_train=400", "task.n_heldout=16"]
# bench: tests/test_benchmarks.py; the GPU layouts: make gpu-check, and their resources in tests/test_devices.py
CONFIGS = sorted(
    p.name
    for p in (ROOT / "configs").glob("*.yaml")
    if p.name not in ("bench.yaml", "gpu_single.yaml", "cluster_example.yaml")
)


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_config_runs_end_to_end(name, tmp_path, request):
    from configs.schema import load_config

    cfg = load_config(ROOT / "configs" / name)
    sets = list(SLICE)
    if cfg.model.gguf_file:  # the packaged model, converted once per session
        sets += [f"model.cache_dir={request.getfixturevalue('smollm2_cache')}", "task.n_heldout=12"]
    elif cfg.own_model:
        sets.append(f"model.policy_dir={save_own_model(tmp_path / 'model')}")
    else:
        sets += TOY
    if cfg.data.source and cfg.data.source.startswith("runs/own_model/"):
        chat = write_task_as_chat(tmp_path / Path(cfg.data.source).name, n_train=200, pairs="pairs" in cfg.data.source)
        sets.append(f"data.source={chat}")
    elif cfg.data.source and not (ROOT / cfg.data.source).exists():
        pytest.skip(f"{cfg.data.source} is not here (../shared/data)")
    assert SHARED_DATA.is_dir() or not cfg.data.source or "shared" not in cfg.data.source
    run = run_job("run", tmp_path, *sets, config=f"configs/{name}")
    assert (tmp_path / "train" / "policy" / "config.json").is_file()
    policy, reference = run["policy_implicit_accuracy"], run["reference_implicit_accuracy"]
    # NaN only where the slice's held-out groups have no pair ordered by its labels: then the reference has none too
    assert (math.isnan(policy) and math.isnan(reference)) or (0.0 <= policy <= 1.0 and reference == 0.5)
