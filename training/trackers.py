"""Metrics where the user's trackers look (``tracking.report_to``): TensorBoard, MLflow, Weights & Biases.

One object takes every metric once and hands it to each tracker. MLflow defaults to a local file store and W&B to
offline mode, so nothing here needs a server. A re-run that resumes a training run continues the same tracker
run (the MLflow run id and the W&B id are kept in the job directory).
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path

from configs.schema import Config

INSTALL = {"mlflow": "pip install '.[mlflow]' (mlflow-skinny)", "wandb": "pip install '.[wandb]'"}


def check_installed(report_to: list[str]) -> None:
    """Refuse before any work when a requested tracker's package is missing."""
    for name in report_to:
        if name == "tensorboard":
            continue
        try:
            __import__(name)
        except ImportError:
            raise ValueError(f"tracking.report_to lists {name}, which is not installed: {INSTALL[name]}") from None


def mlflow_uri(cfg: Config) -> str:
    return cfg.tracking.mlflow_uri or (cfg.local_dir().resolve() / "mlruns").as_uri()


class Trackers:
    """``log({"train/loss": 0.4}, step)``; ``close()`` at the end. ``job`` names the run in each tracker."""

    def __init__(self, cfg: Config, job: str, job_dir: Path, resume_step: int = 0):
        self.report_to = list(cfg.tracking.report_to)
        config = cfg.model_dump(mode="json")
        self._tb = self._mlflow = self._wandb = None
        if "tensorboard" in self.report_to:
            from torch.utils.tensorboard import SummaryWriter  # optional tracker, and a 2 s import

            self._tb = SummaryWriter(str(job_dir / "tensorboard"), purge_step=resume_step or None)
            self._tb.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```", resume_step)
        if "mlflow" in self.report_to:
            from mlflow.tracking import MlflowClient  # optional: the mlflow extra

            uri = mlflow_uri(cfg)
            if uri.startswith("file:"):  # MLflow 3 keeps its file store only on request; it needs no server or database
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            self._mlflow = MlflowClient(uri)
            id_file = job_dir / "mlflow_run_id"
            if resume_step and id_file.is_file():
                self._run_id = id_file.read_text().strip()
            else:
                experiment = self._mlflow.get_experiment_by_name(cfg.name)
                experiment_id = experiment.experiment_id if experiment else self._mlflow.create_experiment(cfg.name)
                self._run_id = self._mlflow.create_run(experiment_id, run_name=job).info.run_id
                id_file.write_text(self._run_id)
                self._mlflow.log_dict(self._run_id, config, "config.json")
        if "wandb" in self.report_to:
            import wandb  # optional: the wandb extra

            os.environ.setdefault("WANDB_MODE", "offline")
            id_file = job_dir / "wandb_run_id"
            run_id = id_file.read_text().strip() if resume_step and id_file.is_file() else secrets.token_hex(4)
            id_file.write_text(run_id)
            (job_dir / "wandb").mkdir(parents=True, exist_ok=True)
            self._wandb = wandb.init(
                project=cfg.tracking.wandb_project or cfg.name,
                name=job,
                id=run_id,
                resume="allow",
                dir=str(job_dir),
                config=config,
                settings=wandb.Settings(silent=True),
            )

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self._tb is not None:
            for key, value in metrics.items():
                self._tb.add_scalar(key, value, step)
        if self._mlflow is not None:
            from mlflow.entities import Metric  # optional: the mlflow extra

            now = int(time.time() * 1000)
            self._mlflow.log_batch(self._run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])
        if self._wandb is not None:
            self._wandb.log(dict(metrics), step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._mlflow is not None:
            self._mlflow.set_terminated(self._run_id)
        if self._wandb is not None:
            self._wandb.finish()
