"""Config sections of where and how jobs run: evaluation, the Ray cluster, object storage, trackers."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from configs.base import Section, check_location


class EvaluateConfig(Section):
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


class RayConfig(Section):
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


class StorageConfig(Section):
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


class TrackingConfig(Section):
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
