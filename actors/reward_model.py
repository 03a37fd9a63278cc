"""Scores from a reward model: a ``transformers`` sequence-classification directory (one logit per text)."""
from __future__ import annotations

import time

import pandas as pd
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from actors.device import load_on_device
from pipeline.stages import as_lists, flat_responses, regroup


class RewardModelScores:
    def __init__(self, model_dir: str, threads: int = 1, batch_size: int = 32, dtype: str = "auto"):
        torch.set_num_threads(max(1, threads))
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = load_on_device(AutoModelForSequenceClassification, model_dir, dtype).eval()
        # The model finds each text's last token by its pad id: without one it refuses batches of more than one.
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        if self.model.config.num_labels != 1:
            raise ValueError(f"reward model {model_dir} has {self.model.config.num_labels} labels; expected 1 (a scalar score)")
        self.batch_size = batch_size

    @torch.no_grad()
    def score_texts(self, prompts: list[str], responses: list[str]) -> list[float]:
        """The score of each ``prompt + response``."""
        texts = [p + r for p, r in zip(prompts, responses)]
        values: list[float] = []
        for c in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(texts[c : c + self.batch_size], return_tensors="pt", padding=True, truncation=True)
            values += self.model(**enc.to(self.model.device)).logits[:, 0].float().tolist()
        return values

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        started = time.perf_counter()
        positions = flat_responses(batch)
        values = self.score_texts([batch["prompt"].iloc[i] for i, _ in positions],
                                  [batch["responses"].iloc[i][j] for i, j in positions])
        out = batch.copy()
        out["scores"] = regroup(batch, positions, values)
        out = as_lists(out)
        out["seconds_rewards"] = (time.perf_counter() - started) / max(len(out), 1)
        return out
