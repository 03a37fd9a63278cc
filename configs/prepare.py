"""Config sections of the prepare job: negatives, contrast groups, vLLM engines, stages and their actors."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from configs.base import Section


class NegativesConfig(Section):
    autoregressive: int = Field(
        default=2, ge=0, description="Autoregressive negatives sampled per prompt from the reference policy (vLLM)."
    )
    meanfield: int = Field(
        default=1,
        ge=0,
        description="Meanfield negatives per prompt: ground truth with a fraction of tokens resampled in one forward "
        "pass.",
    )
    truncation: int = Field(
        default=1, ge=0, description="Truncation negatives per prompt: ground truth cut at a random token, then EOS."
    )
    batch: int = Field(
        default=0, ge=0, description="Batch negatives per prompt: ground truths of other prompts in its contrast group."
    )
    meanfield_fraction: float = Field(
        default=0.15, gt=0, le=1, description="Fraction c of response tokens a meanfield negative resamples."
    )
    temperature: float = Field(default=1.0, gt=0, description="Sampling temperature of autoregressive negatives.")
    top_k: int = Field(default=50, ge=-1, description="Top-k of autoregressive sampling (-1: off).")
    top_p: float = Field(default=1.0, gt=0, le=1, description="Top-p of autoregressive sampling.")
    max_tokens: int = Field(default=32, ge=1, description="Maximum new tokens per autoregressive negative.")
    engine: Literal["vllm", "hf"] = Field(
        default="vllm",
        description="Autoregressive sampler: vllm (default), or hf (transformers.generate, an explicit fallback).",
    )
    keep_ground_truth: bool = Field(
        default=True,
        description="false: each group is the model's own scored samples alone (rejection sampling's and the "
        "self-sample studies' setting): the ground truth prompts the sampling and leaves the group once the "
        "samples are scored, a sample equal to it is kept, and the trainer anchors each prompt on its best-scored "
        "sample. Needs autoregressive >= 2, no negatives made from the ground truth, and a reward that scores.",
    )

    @model_validator(mode="after")
    def _self_samples_need_samples(self) -> NegativesConfig:
        made_from_truth = {"meanfield": self.meanfield, "truncation": self.truncation, "batch": self.batch}
        if not self.keep_ground_truth and (self.autoregressive < 2 or any(made_from_truth.values())):
            raise ValueError(
                "negatives.keep_ground_truth=false makes groups of the model's samples alone: it needs "
                f"autoregressive >= 2 (it is {self.autoregressive}) and no negatives made from the ground truth "
                f"({', '.join(f'{k}={v}' for k, v in made_from_truth.items())})"
            )
        return self


class GroupingConfig(Section):
    method: Literal["neighbors", "random"] = Field(
        default="neighbors",
        description="How prompts are put into RPO contrast groups: greedy nearest neighbours on prompt embeddings, "
        "or random (the paper's baseline).",
    )
    group_size: int = Field(default=4, ge=1, description="Prompts per contrast group.")
    bucket_rows: int = Field(
        default=4096,
        ge=2,
        description="Prompts per k-means bucket: groups are formed exactly inside a bucket, so grouping costs "
        "O(N x bucket_rows); up to this many prompts there is one bucket (exact greedy grouping).",
    )


class VLLMConfig(Section):
    gpu_memory_utilization: float = Field(
        default=0.9,
        gt=0,
        le=1,
        description="GPU only: fraction of the GPU's memory vLLM may take (weights and KV cache).",
    )
    tensor_parallel_size: int = Field(
        default=1, ge=1, description="GPUs one engine shards the model over; prepare.generator_gpus must equal it."
    )
    max_num_seqs: int | None = Field(
        default=None, ge=1, description="Sequences an engine schedules at once (null: vLLM's default)."
    )
    enforce_eager: bool | None = Field(
        default=None, description="Run without CUDA graphs (null: eager on the CPU, CUDA graphs on a GPU)."
    )


class PrepareConfig(Section):
    negatives: NegativesConfig = Field(
        default_factory=NegativesConfig, description="Synthetic negatives added per prompt."
    )
    reward: str = Field(
        default="auto",
        description="Scores of responses: 'source' (the source's scores; only when no negatives are added), 'task' "
        "(the embedded task's reward), 'module:function' (a programmatic scorer f(prompt, response) -> float: the "
        "module is imported and run on the driver and on every worker, so name only code you trust), 'model:<dir>' "
        "(a sequence-classification reward model), 'none' (no scores: enough for CPO, and for DPO/RPO on "
        "chosen/rejected or ground truth), or 'auto' (source scores when present and no negatives are added; the "
        "task reward for the embedded task; otherwise none).",
    )
    embedder_dir: str | None = Field(
        default=None, description="sentence-transformers model directory; null uses the packaged all-MiniLM-L6-v2."
    )
    grouping: GroupingConfig = Field(default_factory=GroupingConfig, description="RPO contrast groups.")
    embed_responses: bool = Field(
        default=True,
        description="Embed every response (needed for CPO's similarity ranks); prompts are always embedded (contrast "
        "groups).",
    )
    embed_max_tokens: int = Field(
        default=256, ge=8, description="Word pieces the embedder reads per text (longer texts are truncated)."
    )
    ref_logps: bool = Field(
        default=True, description="Compute frozen reference log-probs and store them in the shards."
    )
    on_overlength: Literal["error", "skip", "truncate"] = Field(
        default="skip",
        description="A row whose prompt plus a response exceeds model.max_length tokens: error, skip and count, or "
        "truncate (keep the start of prompt + response, like TRL's DPO; rows whose prompt alone fills max_length "
        "are skipped and counted).",
    )
    max_rows: int | None = Field(default=None, ge=1, description="Use only the first N source rows (null: all).")
    shard_groups: int = Field(
        default=64, ge=1, description="Contrast groups per output shard (shards never split a group)."
    )
    batch_size: int = Field(
        default=32,
        ge=1,
        description="Rows per Ray Data batch while tokenizing and embedding prompts; the model stages after grouping "
        "take one shard (shard_groups groups) per batch.",
    )
    vllm: VLLMConfig = Field(
        default_factory=VLLMConfig, description="vLLM engine settings of the generator and of evaluation's answers."
    )
    embed_batch_size: int = Field(default=64, ge=1, description="Texts per sentence-transformers forward pass.")
    score_batch_size: int = Field(
        default=64, ge=1, description="Sequences per forward pass of the meanfield sampler and the reward model."
    )
    reference_batch_prompts: int = Field(
        default=16,
        ge=1,
        description="Prompts (each packed with all its responses) per forward pass of the reference scorer.",
    )
    generator_actors: int = Field(default=1, ge=1, description="vLLM generator actors.")
    generator_cpus: float = Field(default=1, gt=0, description="CPUs per vLLM generator actor.")
    generator_gpus: float = Field(default=0, ge=0, description="GPUs per vLLM generator actor (0 on CPU machines).")
    generator_cpu_bind: str | None = Field(
        default=None,
        description="vLLM-CPU only: cores its generator threads bind to (VLLM_CPU_OMP_THREADS_BIND, e.g. '0-1'); "
        "null keeps vLLM's 'auto', which leaves one core to vLLM's front-end process.",
    )
    model_actors: int = Field(
        default=1,
        ge=1,
        description="Actors of each stage that owns a small model (embedder, reference scorer, reward model).",
    )
    model_actor_cpus: float = Field(default=0.5, gt=0, description="CPUs per small-model actor.")
    model_actor_gpus: float = Field(
        default=0, ge=0, description="GPUs per small-model actor (fractions such as 0.25 let several share one device)."
    )

    @model_validator(mode="after")
    def _self_samples_are_scored(self) -> PrepareConfig:
        if not self.negatives.keep_ground_truth and self.reward in ("none", "source"):
            raise ValueError(
                f"negatives.keep_ground_truth=false needs a reward that scores the samples, not reward={self.reward!r}"
            )
        return self

    @model_validator(mode="after")
    def _tensor_parallel(self) -> PrepareConfig:
        tp = self.vllm.tensor_parallel_size
        if tp > 1 and self.generator_gpus != tp:
            raise ValueError(
                f"vllm.tensor_parallel_size={tp} shards the model over {tp} GPUs: set generator_gpus: {tp} "
                f"(it is {self.generator_gpus})"
            )
        return self
