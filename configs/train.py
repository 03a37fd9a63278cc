"""Config sections of training: the SFT job, DeepSpeed, LoRA and the preference trainer."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from configs.base import Section


class DeepSpeedConfig(Section):
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


class SFTConfig(Section):
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


class LoraConfig(Section):
    rank: int = Field(default=8, ge=1, description="LoRA rank r.")
    alpha: float = Field(default=16, gt=0, description="LoRA scale alpha (the update is scaled by alpha / r).")
    dropout: float = Field(default=0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: str | list[str] = Field(
        default="all-linear",
        description="Modules that get adapters: peft's 'all-linear' or a list of module names (e.g. [q_proj, v_proj]).",
    )


PAIRWISE_LOSSES = ("dpo", "ipo", "hinge", "robust_dpo", "nca_pair")


class TrainConfig(Section):
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
