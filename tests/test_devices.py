"""The device rule and the resources every stage asks Ray for (CPU-only machine: nothing here runs on a GPU).

The rule is a pure function of the GPU ids Ray assigned; every model-owning actor follows it (with a faked
assignment a CPU-only torch refuses to place the model, which shows the actor asked for the GPU); the Ray
resources of every prepare stage are read from the built Ray Data plan and those of the trainers from their
``TorchTrainer`` arguments, for the shipped GPU configs.
"""

from __future__ import annotations

import pytest
import ray
import torch

import actors.device as device_rule
from actors.device import device_for, model_dtype, vllm_dtype
from actors.embedder import Embedder
from actors.generator import HFNegatives, vllm_engine_args
from actors.reference import MeanfieldNegatives, ReferenceLogps
from actors.reward_model import RewardModelScores
from configs.base import ConfigError
from configs.prepare import NegativesConfig, VLLMConfig
from configs.schema import load_config
from orchestration.prepare_graph import build_front_graph, build_main_graph
from tests.conftest import ROOT
from training.engine import deepspeed_config, trainer_resources

CUDA = torch.device("cuda", 0)
CPU = torch.device("cpu")


def test_the_rule_gives_the_assigned_gpu_else_the_cpu():
    assert device_for([]) == CPU
    assert device_for([3]) == CUDA  # Ray makes GPU 3 the process's only visible device
    assert device_for(["0", "1"]) == CUDA  # tensor-parallel actors: the first of theirs
    assert model_dtype("auto", CUDA) == torch.bfloat16 and model_dtype("auto", CPU) == torch.float32
    assert model_dtype("fp32", CUDA) == torch.float32 and model_dtype("bf16", CPU) == torch.bfloat16
    assert vllm_dtype("auto", CUDA) == "bfloat16" and vllm_dtype("auto", CPU) == "float32"


def test_vllm_engine_arguments_follow_the_device():
    settings = VLLMConfig(gpu_memory_utilization=0.5, tensor_parallel_size=2, max_num_seqs=64)
    on_gpu = vllm_engine_args(settings, "auto", CUDA)
    assert on_gpu == {
        "dtype": "bfloat16",
        "tensor_parallel_size": 2,
        "enforce_eager": False,
        "gpu_memory_utilization": 0.5,
        "max_num_seqs": 64,
    }
    on_cpu = vllm_engine_args(VLLMConfig(), "auto", CPU)
    assert on_cpu == {"dtype": "float32", "tensor_parallel_size": 1, "enforce_eager": True}
    assert vllm_engine_args(VLLMConfig(enforce_eager=True), "fp32", CUDA)["enforce_eager"] is True


@pytest.fixture(scope="module")
def reward_model_dir(tiny_model_dir, tmp_path_factory):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    path = tmp_path_factory.mktemp("reward")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    LlamaForSequenceClassification(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_labels=1,
        )
    ).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def _build(stage: str, model_dir: str, reward_dir: str):
    return {
        "embedder": lambda: Embedder(None, "prompts"),
        "meanfield": lambda: MeanfieldNegatives(model_dir, n=1, fraction=0.5, seed=0),
        "reference": lambda: ReferenceLogps(model_dir, row_tokens=64),
        "hf_sampler": lambda: HFNegatives(model_dir, NegativesConfig(), seed=0, max_model_len=64),
        "reward_model": lambda: RewardModelScores(reward_dir),
    }[stage]()


@pytest.mark.parametrize("stage", ["embedder", "meanfield", "reference", "hf_sampler", "reward_model"])
def test_model_stages_build_on_the_rules_device(stage, tiny_model_dir, reward_model_dir, monkeypatch):
    weight = next(_build(stage, str(tiny_model_dir), reward_model_dir).model.parameters())  # outside Ray: no GPU
    assert weight.device == CPU and weight.dtype == torch.float32
    monkeypatch.setattr(device_rule.ray, "is_initialized", lambda: True)
    monkeypatch.setattr(device_rule.ray, "get_gpu_ids", lambda: [2])
    if torch.cuda.is_available():
        weight = next(_build(stage, str(tiny_model_dir), reward_model_dir).model.parameters())
        assert weight.device.type == "cuda" and weight.dtype == torch.bfloat16
    else:  # a CPU-only torch refuses the GPU the actor asked for
        with pytest.raises((AssertionError, RuntimeError), match="CUDA|cuda"):
            _build(stage, str(tiny_model_dir), reward_model_dir)


def _stages(ds) -> dict[str, dict]:
    """Name -> Ray resources, actor count and batch size of every map stage of a built (not executed) plan."""
    out, op = {}, ds._logical_plan.dag
    while op.input_dependencies:
        if getattr(op, "ray_remote_args", None) is not None:
            name = op.name.removeprefix("MapBatches(").removesuffix(")")
            compute = getattr(op.compute, "max_size", None)
            out[name] = {
                **{k: op.ray_remote_args.get(k) for k in ("num_cpus", "num_gpus")},
                "actors": compute,
                "batch_size": op.batch_size,
            }
        op = op.input_dependencies[0]
    return out


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


class _Tokenizer:
    eos_token_id = 2


@pytest.mark.parametrize("name", ["gpu_single", "cluster_example"])
def test_prepare_stages_ask_ray_for_the_configured_resources(name, local_ray):
    cfg = load_config(ROOT / "configs" / f"{name}.yaml")
    p = cfg.prepare
    reward = "model:/rm" if name == "cluster_example" else "task"
    main = _stages(
        build_main_graph(
            ray.data.from_items([{"shard": "x"}]),
            cfg,
            "/model",
            _Tokenizer(),
            reward,
            shard_rows=300,
            end_id=_Tokenizer.eos_token_id,
        )
    )
    small = {
        "num_cpus": p.model_actor_cpus,
        "num_gpus": p.model_actor_gpus,
        "actors": p.model_actors,
        "batch_size": 300,
    }
    expected = {
        "VLLMNegatives": {
            "num_cpus": p.generator_cpus,
            "num_gpus": p.generator_gpus,
            "actors": p.generator_actors,
            "batch_size": 300,
        },
        "MeanfieldNegatives": small,
        "Embedder": small,
        "ReferenceLogps": small,
    }
    if reward.startswith("model:"):
        expected["RewardModelScores"] = small
    assert {k: v for k, v in main.items() if k in expected} == expected
    assert all(v["num_gpus"] is None for k, v in main.items() if k not in expected)  # the CPU stages ask for none
    front = _stages(
        build_front_graph(ray.data.from_items([{"id": "x"}]), cfg, _Tokenizer(), chat_templated=False, end_id=2)
    )
    assert front["Embedder"] == {**small, "batch_size": p.batch_size}


@pytest.mark.parametrize("name", ["gpu_single", "cluster_example"])
def test_trainers_ask_ray_for_gpu_workers_and_nccl(name):
    cfg = load_config(ROOT / "configs" / f"{name}.yaml")
    tc = cfg.train
    args = trainer_resources(tc.num_workers, tc.cpus_per_worker, tc.gpus_per_worker)
    scaling = args["scaling_config"]
    assert scaling.num_workers == tc.num_workers and scaling.use_gpu
    assert scaling.resources_per_worker == {"CPU": tc.cpus_per_worker, "GPU": tc.gpus_per_worker}
    assert args["torch_config"].backend == "nccl"
    assert deepspeed_config(
        tc.deepspeed, micro_batch=1, grad_accum=1, world_size=1, lr=1e-5, weight_decay=0.0, device=CUDA
    )["bf16"]["enabled"]
    cpu = trainer_resources(2, 1, 0)
    assert not cpu["scaling_config"].use_gpu and cpu["scaling_config"].resources_per_worker == {"CPU": 1}
    assert cpu["torch_config"].backend == "gloo"
    assert not deepspeed_config(
        tc.deepspeed, micro_batch=1, grad_accum=1, world_size=1, lr=1e-5, weight_decay=0.0, device=CPU
    )["bf16"]["enabled"]


def test_tensor_parallel_needs_as_many_generator_gpus(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("prepare:\n  generator_gpus: 1\n  vllm:\n    tensor_parallel_size: 2\n")
    with pytest.raises(ConfigError, match="set generator_gpus: 2"):
        load_config(path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: make gpu-check runs for real")
def test_gpu_check_without_a_gpu_says_so_and_exits_0():
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and "no GPU here" in proc.stdout and "nothing to check" in proc.stdout


def test_gradient_checkpointing_is_switched_on_by_the_config(tiny_model_dir):
    from configs.train import DeepSpeedConfig
    from training.engine import load_for_training

    off = load_for_training(tiny_model_dir, DeepSpeedConfig(), CPU)
    on = load_for_training(tiny_model_dir, DeepSpeedConfig(gradient_checkpointing=True), CPU)
    assert not off.is_gradient_checkpointing and on.is_gradient_checkpointing and not on.config.use_cache
    assert next(on.parameters()).dtype == torch.float32  # auto on the CPU
    assert (
        next(load_for_training(tiny_model_dir, DeepSpeedConfig(dtype="bf16"), CPU).parameters()).dtype == torch.bfloat16
    )
