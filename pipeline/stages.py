"""The tokenize stage, and the anchor every stage contrasts with. Prepare's stages are plain functions over pandas
batches and tensors (this module, :mod:`pipeline.frames`, :mod:`pipeline.negatives`, :mod:`pipeline.rewards`).

Each function here is what one Ray Data ``map_batches`` step runs (``orchestration.prepare`` wires
them); none of them needs a cluster, so they are unit-tested alone. Token ids are the source
of truth for a response (``response_ids``): negatives are made as tokens, and the trainer
and the reference scorer read those exact tokens, never a re-tokenization of the text.

Rows that cannot be used are not dropped inside a stage: the stage sets ``skip_reason`` and
later stages pass such rows through, so the writer can count every skip by its reason.
Absent values are empty (``""``, ``[]``) rather than null so every batch has the same Arrow
types; the shard writer turns them into nulls.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.tokenize import encode_prompt, encode_response


def best_scored_first(origins: list[str], scores: list[float]) -> list[int] | None:
    """The order that puts a scored row's best response first (the first of equals), where the row has neither a
    ground truth nor a chosen response to anchor on; None where nothing moves."""
    if not len(scores) or {"ground_truth", "chosen"} & set(origins):
        return None
    best = int(np.argmax(scores))
    return [best, *(i for i in range(len(origins)) if i != best)] if best else None


def tokenize_records(
    batch: pd.DataFrame,
    tokenizer,
    max_length: int,
    on_overlength: str,
    templated: bool = False,
    end_id: int | None = None,
) -> pd.DataFrame:
    """Add ``prompt_ids``, ``response_ids`` and ``truncated`` (responses cut); mark rows over ``max_length`` tokens
    (rows already marked keep their ``skip_reason`` and are not tokenized).
    ``templated``: the prompts were rendered by a chat template (see :func:`pipeline.tokenize.encode_prompt`);
    ``end_id``: the token each response ends with (:func:`pipeline.tokenize.response_end_id`; None: EOS).

    ``on_overlength="truncate"`` keeps the start of prompt + response, as TRL's DPO collator does
    (``truncation_mode="keep_start"``); a prompt that alone fills ``max_length`` leaves no response
    token to learn from, so its row is skipped as ``prompt_over_length``.
    """
    batch = batch.copy()
    prompt_ids, response_ids, truncated, reasons = [], [], [], []
    moved: dict = {}  # row index -> responses, origins and scores in best-scored-first order
    for row in batch.itertuples():
        if getattr(row, "skip_reason", ""):  # left out before tokenizing (a bad source row)
            prompt_ids.append([])
            response_ids.append([])
            truncated.append(0)
            reasons.append(row.skip_reason)
            continue
        p = encode_prompt(tokenizer, row.prompt, templated)
        order = best_scored_first(list(row.origins), [] if row.scores is None else list(row.scores))
        if order:
            moved[row.Index] = {
                c: [list(v)[i] for i in order]
                for c, v in (("responses", row.responses), ("origins", row.origins), ("scores", row.scores))
            }
        rs = [encode_response(tokenizer, r, end_id) for r in moved.get(row.Index, {}).get("responses", row.responses)]
        longest = len(p) + max(len(r) for r in rs)
        reason, cut = "", 0
        if longest > max_length:
            if on_overlength == "error":
                raise ValueError(
                    f"{row.source} row {row.row}, field 'responses': prompt + response is {longest} tokens, "
                    f"over model.max_length={max_length} (set prepare.on_overlength: skip or truncate)"
                )
            if on_overlength == "skip":
                reason = "over_length"
            elif len(p) >= max_length:
                reason = "prompt_over_length"
            else:
                cut = sum(len(p) + len(r) > max_length for r in rs)
                rs = [r[: max_length - len(p)] for r in rs]
        prompt_ids.append(p)
        response_ids.append(rs)
        truncated.append(cut)
        reasons.append(reason)
    for column in ("responses", "origins", "scores"):
        batch[column] = [moved[i][column] if i in moved else v for i, v in zip(batch.index, batch[column])]
    batch["prompt_ids"] = prompt_ids
    batch["response_ids"] = response_ids
    batch["truncated"] = truncated
    batch["skip_reason"] = reasons
    return batch


def anchor_index(origins) -> int:
    """The response negatives are made from and contrasted with, by every stage and the trainer alike: the ground
    truth, else the chosen, else the first, which :func:`tokenize_records` makes the source's best-scored one (so
    the anchor stays where it was when a reward later rescores the responses)."""
    origins = list(origins)
    for origin in ("ground_truth", "chosen"):
        if origin in origins:
            return origins.index(origin)
    return 0
