"""Stages that run the frozen reference model: meanfield negatives and reference log-probs."""

from __future__ import annotations

import time

import pandas as pd
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from actors.device import load_on_device
from models.architectures import forward_plan
from models.logprobs import reference_logps, response_logits
from pipeline.frames import active, as_lists, flat_responses, regroup, row_seed
from pipeline.negatives import append_negatives, meanfield_resample
from pipeline.stages import anchor_index
from pipeline.tokenize import pad_token_id


class _ReferenceActor:
    def __init__(self, model_dir: str, threads: int = 1, dtype: str = "auto"):
        torch.set_num_threads(max(1, threads))
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = load_on_device(AutoModelForCausalLM, model_dir, dtype).eval()
        forward_plan(self.model)  # refuses a model it cannot score exactly, before any batch
        self.pad_id = pad_token_id(self.tokenizer, self.model.get_input_embeddings().num_embeddings)


class MeanfieldNegatives(_ReferenceActor):
    """One teacher-forced forward pass per ground truth; ``n`` negatives resample a fraction c of its tokens."""

    def __init__(
        self,
        model_dir: str,
        n: int,
        fraction: float,
        seed: int,
        threads: int = 1,
        dtype: str = "auto",
        batch_size: int = 64,
    ):
        super().__init__(model_dir, threads, dtype)
        self.n, self.fraction, self.seed, self.batch_size = n, fraction, seed, batch_size

    @torch.no_grad()
    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        started = time.perf_counter()
        rows = [i for i, ok in enumerate(active(batch)) if ok]
        new_ids: list[list[list[int]]] = [[] for _ in range(len(batch))]
        for chunk in range(0, len(rows), self.batch_size):
            idx = rows[chunk : chunk + self.batch_size]
            prompts = [list(batch["prompt_ids"].iloc[i]) for i in idx]
            truths = [list(batch["response_ids"].iloc[i][anchor_index(batch["origins"].iloc[i])]) for i in idx]
            for i, y, logits in zip(idx, truths, response_logits(self.model, prompts, truths, self.pad_id)):
                gen = torch.Generator().manual_seed(row_seed(self.seed, batch["id"].iloc[i], "meanfield"))
                y_t = torch.tensor(y)
                logits = logits.float().cpu()  # sampled with a seeded CPU generator: the same negatives on any device
                samples = [meanfield_resample(y_t, logits, self.fraction, gen) for _ in range(self.n)]
                # round(c*T) = 0 for very short responses: nothing would change, so there is no negative to add.
                new_ids[i] = [ids.tolist() for ids, positions in samples if len(positions)]
        out = append_negatives(batch, new_ids, "meanfield", self.tokenizer)
        out = as_lists(out)
        out["seconds_meanfield"] = (time.perf_counter() - started) / max(len(out), 1)
        return out


class ReferenceLogps(_ReferenceActor):
    """``ref_logps``: summed reference log-probs of every response, computed as the trainer computes the
    policy's (same tokenization, each prompt packed once with its responses)."""

    def __init__(
        self, model_dir: str, row_tokens: int, threads: int = 1, dtype: str = "auto", prompts_per_pass: int = 16
    ):
        super().__init__(model_dir, threads, dtype)
        self.row_tokens, self.prompts_per_pass = row_tokens, prompts_per_pass

    @torch.no_grad()
    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        started = time.perf_counter()
        positions = flat_responses(batch)
        per_row: dict[int, list[int]] = {}
        for i, j in positions:
            per_row.setdefault(i, []).append(j)
        rows = list(per_row.items())
        values = reference_logps(  # prompt-major, as flat_responses orders them
            self.model,
            [list(batch["prompt_ids"].iloc[i]) for i, _ in rows],
            [[list(batch["response_ids"].iloc[i][j]) for j in js] for i, js in rows],
            self.pad_id,
            self.row_tokens,
            self.prompts_per_pass,
        )
        out = batch.copy()
        out["ref_logps"] = regroup(batch, positions, values)
        out = as_lists(out)
        out["seconds_ref_logps"] = (time.perf_counter() - started) / max(len(out), 1)
        return out
