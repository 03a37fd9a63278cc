"""Scores from a reward model: a ``transformers`` sequence-classification directory (one logit per text)."""

from __future__ import annotations

import time

import pandas as pd
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from actors.device import load_on_device
from pipeline.frames import as_lists, flat_responses, regroup


class RewardModelScores:
    """A reward model's score of each (prompt, response), read as the reward model was trained to read it: in its
    own chat template when its tokenizer has one (the prompt as the user's turn, the response as the assistant's,
    ended as the template ends a turn), else the prompt followed by the response. Texts longer than the model reads
    lose the start of the prompt, never the response being scored."""

    def __init__(self, model_dir: str, threads: int = 1, batch_size: int = 32, dtype: str = "auto"):
        torch.set_num_threads(max(1, threads))
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.truncation_side = "left"
        self.model = load_on_device(AutoModelForSequenceClassification, model_dir, dtype).eval()
        # The model finds each text's last token by its pad id: without one it refuses batches of more than one.
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        if self.model.config.num_labels != 1:
            raise ValueError(
                f"reward model {model_dir} has {self.model.config.num_labels} labels; expected 1 (a scalar score)"
            )
        positions = getattr(self.model.config, "max_position_embeddings", None) or self.tokenizer.model_max_length
        self.max_tokens = min(positions, self.tokenizer.model_max_length)
        self.batch_size = batch_size

    def texts(self, prompts: list[str], responses: list[str]) -> list[str]:
        """What the reward model reads for each pair (see the class docstring)."""
        if not self.tokenizer.chat_template:
            return [p + r for p, r in zip(prompts, responses)]
        return [
            self.tokenizer.apply_chat_template(
                [{"role": "user", "content": p}, {"role": "assistant", "content": r}], tokenize=False
            )
            for p, r in zip(prompts, responses)
        ]

    @torch.no_grad()
    def score_texts(self, prompts: list[str], responses: list[str]) -> list[float]:
        """The score of each ``(prompt, response)``."""
        texts = self.texts(prompts, responses)
        # a chat template writes its own special tokens (BOS among them); the plain layout takes the tokenizer's
        special = not self.tokenizer.chat_template
        values: list[float] = []
        for c in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(
                texts[c : c + self.batch_size],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_tokens,
                add_special_tokens=special,
            )
            values += self.model(**enc.to(self.model.device)).logits[:, 0].float().tolist()
        return values

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        started = time.perf_counter()
        positions = flat_responses(batch)
        values = self.score_texts(
            [batch["prompt"].iloc[i] for i, _ in positions], [batch["responses"].iloc[i][j] for i, j in positions]
        )
        out = batch.copy()
        out["scores"] = regroup(batch, positions, values)
        out = as_lists(out)
        out["seconds_rewards"] = (time.perf_counter() - started) / max(len(out), 1)
        return out
