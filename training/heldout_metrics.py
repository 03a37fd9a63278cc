"""The trainer's held-out figures: implicit-reward accuracy and length figures on the held-out groups, each rank
scoring its share a micro-batch at a time, summed over the ranks."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator

import torch

from configs.schema import Config
from models.architectures import ForwardPlan
from models.logprobs import packed_logps
from training.batches import Batch, record_reference
from training.collectives import all_sum
from training.objective import preference_loss

# Per-step and held-out figures: sums over micro-batches and ranks (objective.preference_loss's metrics), then ratios.
RATIOS = {
    "accuracy": ("accuracy_correct", "accuracy_pairs"),
    "lc_accuracy": ("lc_correct", "lc_pairs"),
    "reward_length_corr": ("length_corr_sum", "length_corr_prompts"),
    "top_response_tokens": ("top_tokens_sum", "top_prompts"),
}
SUMMED = (
    "loss",
    "prompts",
    "skipped_prompts",
    "tokens",
    "computed_tokens",
    "response_tokens",
    *(k for pair in RATIOS.values() for k in pair),
)


def ratios(total: dict) -> dict[str, float]:
    """Each ratio of the summed figures; NaN where nothing was counted (no pair ordered by its labels: an accuracy
    of 0 there would read as a policy ranking every pair wrong)."""
    return {name: total[num] / total[den] if total[den] else float("nan") for name, (num, den) in RATIOS.items()}


def sequence_values(engine, ref_model, batch: Batch, live_reference: bool, plan: ForwardPlan):
    """Summed log-probs of every response under the policy and the reference (the stored one, or ``ref_model``
    when ``live_reference``), and the responses' token counts, each ``[P, K]``."""
    policy = batch.gather(packed_logps(engine, batch.packed, plan))
    if live_reference:
        with torch.no_grad():
            ref = batch.gather(packed_logps(ref_model, batch.packed, plan))
    else:
        ref = batch.ref_logps
    counts = batch.gather(batch.packed.response_lengths.float())
    return policy, ref, counts


def heldout_share(held_ids: list[int], rank: int, world: int, micro_groups: int) -> list[list[int] | None]:
    """This rank's micro-batches of held-out groups: every rank gets the same number (ZeRO-3's forward is a
    collective), ranks short of groups repeat the first held-out group as ``None`` entries that do not count."""
    mine = held_ids[rank::world]
    n = -(-len(held_ids[0::world]) // micro_groups)
    chunks = [mine[i : i + micro_groups] for i in range(0, len(mine), micro_groups)]
    return chunks + [None] * (n - len(chunks))


def heldout_batches(
    held_ids: list[int], rank: int, world: int, micro_groups: int, load
) -> Iterator[tuple[bool, list[int], Batch]]:
    """This rank's held-out micro-batches (:func:`heldout_share`) as ``(counts toward the figures, group ids,
    load(ids))``, each read and collated when the evaluation reaches it: no held-out batch stays in memory, or on the
    device, between evaluations, however large the held-out set."""
    for ids in heldout_share(held_ids, rank, world, micro_groups):
        ids, counts = (ids, True) if ids is not None else (held_ids[:1], False)
        yield counts, ids, load(ids)


@torch.no_grad()
def heldout_metrics(
    engine,
    ref_model,
    batches: Iterable[tuple[bool, list[int], Batch]],
    cfg: Config,
    plan: ForwardPlan,
    live: bool = False,
    record: dict | None = None,
) -> dict[str, float]:
    """Implicit-reward accuracy and the length figures of :data:`RATIOS` on the held-out groups, each rank
    scoring its share, summed over ranks; the reference is the batches' ``ref_logps``, or ``ref_model`` when
    ``live``. With ``record`` (step 0, where the policy is the reference), the policy's
    log-probs are kept there as the held-out reference of every later evaluation: the reference and the policy are
    then scored by the same forward, in the same precision and batch layout, so the figures compare the models and
    not two numerics (the start is exactly 0.5)."""
    sums: Counter = Counter()
    engine.eval()
    for counts_toward, ids, batch in batches:
        policy, ref, counts = sequence_values(engine, ref_model, batch, live and record is None, plan)
        if record is not None:
            ref = policy
            if counts_toward:
                record_reference(record, ids, batch, policy)
        _, m = preference_loss(cfg.train, batch, policy, ref, counts)
        if counts_toward:
            sums.update(m)
    engine.train()
    keys = [k for pair in RATIOS.values() for k in pair]
    return ratios(dict(zip(keys, all_sum([float(sums[k]) for k in keys]))))
