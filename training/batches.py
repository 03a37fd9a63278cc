"""From shard records to training tensors, one contrast group at a time.

A *group* is what the prepare job grouped (RPO's contrast group: related prompts); each prompt
carries K responses. The trainer's unit of data is the whole group, so no batch ever splits
one. Within a prompt the anchor response (:func:`pipeline.stages.anchor_index`: the one the prepare
stages built negatives from) is moved to index 0, which is where CPO expects the ground truth; a group of the
model's own samples alone (every origin ``autoregressive``) is anchored on its best-scored sample.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np
import pandas as pd
import torch

from models.packing import Packed, pack_shared_prompts
from pipeline.stages import anchor_index, best_scored_first


def _list_or_none(value):
    """A list column's value, or None where it is null (None, or pandas' NA when the whole column is null)."""
    return None if value is None or value is pd.NA or (np.isscalar(value) and pd.isna(value)) else value


def _prompt_record(row, max_responses: int | None) -> dict:
    origins = list(row["origins"])
    scores = _list_or_none(row["scores"])
    scores = None if scores is None else [float(s) for s in scores]
    a = anchor_index(origins)
    perm = ([a] + [i for i in range(len(origins)) if i != a])[:max_responses]
    if scores is not None and set(origins) == {"autoregressive"}:
        # the model's own samples alone: the best-scored of those kept is the anchor (rejection sampling's choice)
        best = best_scored_first([origins[i] for i in perm], [scores[i] for i in perm])
        perm = [perm[i] for i in best] if best else perm
    where = {old: new for new, old in enumerate(perm)}
    rank, ref = _list_or_none(row.get("rank")), _list_or_none(row.get("ref_logps"))
    return {
        "prompt_ids": np.asarray(row["prompt_ids"], dtype=np.int64).tolist(),
        "response_ids": [np.asarray(row["response_ids"][i], dtype=np.int64).tolist() for i in perm],
        "origins": [origins[i] for i in perm],
        "scores": None if scores is None else [scores[i] for i in perm],
        "ref_logps": None if ref is None else np.asarray(ref, dtype=np.float64)[perm].tolist(),
        "rank": None if rank is None else [where[int(i)] for i in rank if int(i) in where],
        "similarity": np.asarray(row["group_similarity"], dtype=np.float64).tolist(),
    }


# what packing reads of a shard row: GroupReader converts only these columns
PACKED_COLUMNS = (
    "group_id",
    "group_position",
    "group_size",
    "origins",
    "scores",
    "prompt_ids",
    "response_ids",
    "rank",
    "ref_logps",
    "group_similarity",
)


def pack_records(records: list[dict], max_responses: int | None = None) -> list[dict]:
    """One dict per contrast group (members in group order, groups by id), from per-prompt shard records; with
    ``max_responses``, each prompt keeps its anchor and the first others up to that many."""
    by_group: dict[int, list[dict]] = {}
    for record in records:
        by_group.setdefault(int(record["group_id"]), []).append(record)
    groups = []
    for gid in sorted(by_group):
        part = sorted(by_group[gid], key=lambda r: int(r["group_position"]))
        if len(part) != int(part[0]["group_size"]):
            raise ValueError(
                f"contrast group {gid} is split: {len(part)} of {int(part[0]['group_size'])} prompts present"
            )
        groups.append({"group_id": gid, "members": [_prompt_record(r, max_responses) for r in part]})
    return groups


def pack_groups(rows: pd.DataFrame, max_responses: int | None = None) -> list[dict]:
    """:func:`pack_records` of a frame of shard rows."""
    return pack_records(rows.to_dict("records"), max_responses)


@dataclass
class Batch:
    """Tensors of a list of groups. ``P`` prompts, ``K`` the most responses of any prompt, ``N`` sequences."""

    packed: Packed  # the N sequences, each prompt forwarded once with its responses
    seq_index: torch.Tensor  # [P, K] row of each response in the N sequences (0 where padded)
    mask: torch.Tensor  # [P, K] real responses
    ref_logps: torch.Tensor | None  # [P, K]
    scores: torch.Tensor | None  # [P, K]
    order: torch.Tensor | None  # [P, K] CPO ranking (anchor first)
    is_rejected: torch.Tensor  # [P, K] origin "rejected"
    group_of_prompt: torch.Tensor  # [P]
    similarity: list[torch.Tensor]  # per group [B, B]

    def to(self, device: torch.device) -> Batch:
        """The same batch with its tensors on ``device`` (the training step's; collation runs on the CPU)."""
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in fields(self)
            if isinstance(getattr(self, f.name), (torch.Tensor, Packed))
        }
        return replace(self, **moved, similarity=[s.to(device) for s in self.similarity])

    def gather(self, per_sequence: torch.Tensor) -> torch.Tensor:
        """``[N]`` per-sequence values laid out as ``[P, K]`` (0 where padded)."""
        return torch.where(
            self.mask, per_sequence[self.seq_index], torch.zeros_like(self.mask, dtype=per_sequence.dtype)
        )


def collate(groups: list[dict], pad_id: int, row_tokens: int, share_prompts: bool = True) -> Batch:
    """Tensors of ``groups``; sequences are packed into rows of ``row_tokens``, prompts shared or not as the
    model's :func:`models.logprobs.forward_plan` says (see :class:`Packed`)."""
    members = [(g, m) for g, group in enumerate(groups) for m in group["members"]]
    K = max(len(m["response_ids"]) for _, m in members)
    P = len(members)
    n = 0
    seq_index = torch.zeros(P, K, dtype=torch.long)
    mask = torch.zeros(P, K, dtype=torch.bool)
    is_rejected = torch.zeros(P, K, dtype=torch.bool)
    have_ref = all(m["ref_logps"] is not None for _, m in members)
    have_scores = all(m["scores"] is not None for _, m in members)
    if not have_scores and any(m["scores"] is not None for _, m in members):
        mixed = sorted({group["group_id"] for group in groups for m in group["members"] if m["scores"] is None})
        raise ValueError(
            f"contrast groups {mixed[:5]} hold prompts without scores beside scored ones: the shards mix "
            "scored and unscored prompts (made before prepare.reward applied to every row); re-run prepare"
        )
    have_rank = all(m["rank"] is not None for _, m in members)
    ref = torch.zeros(P, K, dtype=torch.float64)
    scores = torch.zeros(P, K, dtype=torch.float64)
    order = torch.arange(K).repeat(P, 1)
    for p, (_, m) in enumerate(members):
        k = len(m["response_ids"])
        seq_index[p, :k] = torch.arange(n, n + k)
        n += k
        mask[p, :k] = True
        is_rejected[p, :k] = torch.tensor([o == "rejected" for o in m["origins"]])
        if have_ref:
            ref[p, :k] = torch.tensor(m["ref_logps"])
        if have_scores:
            scores[p, :k] = torch.tensor(m["scores"])
        if have_rank:
            order[p, :k] = torch.tensor(m["rank"])
    packed = pack_shared_prompts(
        [m["prompt_ids"] for _, m in members],
        [m["response_ids"] for _, m in members],
        pad_id,
        row_tokens,
        share_prompts,
    )
    return Batch(
        packed=packed,
        seq_index=seq_index,
        mask=mask,
        ref_logps=ref.float() if have_ref else None,
        scores=scores.float() if have_scores else None,
        order=order if have_rank else None,
        is_rejected=is_rejected,
        group_of_prompt=torch.tensor([g for g, _ in members]),
        similarity=[torch.tensor([m["similarity"] for m in group["members"]]) for group in groups],
    )


def record_reference(record: dict[int, list[list[float]]], ids: list[int], batch: Batch, logps: torch.Tensor) -> None:
    """Keep ``logps`` (``[P, K]``, the policy's at step 0: the reference in the trainer's own forward) per group and
    prompt, in the order the groups' records list their responses."""
    values = logps.detach().float().cpu()
    for p, g in enumerate(batch.group_of_prompt.tolist()):
        record.setdefault(ids[g], []).append(values[p][batch.mask[p].cpu()].tolist())


def with_recorded_reference(groups: list[dict], record: dict[int, list[list[float]]]) -> list[dict]:
    """``groups`` with each prompt's ``ref_logps`` replaced by the recorded ones (:func:`record_reference`)."""
    for group in groups:
        for member, values in zip(group["members"], record[group["group_id"]]):
            member["ref_logps"] = values
    return groups
