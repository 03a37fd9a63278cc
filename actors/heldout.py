"""Held-out implicit rewards of a policy against its reference, scored in a Ray actor (never in the driver)."""

from __future__ import annotations

from collections import Counter

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from actors.device import load_on_device
from configs.train import TrainConfig
from models.architectures import forward_plan
from models.logprobs import packed_logps
from pipeline.tokenize import pad_token_id
from training.batches import collate
from training.group_reader import GroupReader
from training.heldout_metrics import ratios
from training.objective import implicit_accuracy, implicit_logps, reward_metric_sums


class HeldoutScores:
    """Loads the reference and the policy in one precision on the actor's device (the device rule), reads the
    held-out groups a micro-batch at a time from the shards, as the trainer does, and scores both models with the
    same forward on the same batches: a policy equal to its reference scores exactly 0.5 in any precision."""

    def __init__(
        self,
        reference_dir: str,
        policy_dir: str,
        shard_files: list[str],
        max_responses: int | None,
        dtype: str,
        row_tokens: int,
        threads: int = 1,
    ):
        torch.set_num_threads(max(1, threads))
        self.reference = load_on_device(AutoModelForCausalLM, reference_dir, dtype).eval()
        self.policy = (
            self.reference
            if policy_dir == reference_dir
            else load_on_device(AutoModelForCausalLM, policy_dir, dtype).eval()
        )
        self.plan = forward_plan(self.policy)
        self.pad_id = pad_token_id(
            AutoTokenizer.from_pretrained(policy_dir), self.policy.get_input_embeddings().num_embeddings
        )
        self.reader = GroupReader(shard_files, max_responses)
        self.row_tokens = row_tokens

    def _rewards(self, group_ids: list[int], micro_groups: int, reference: list | None = None):
        """Per micro-batch of ``group_ids``: its groups, its batch (on the CPU), both models' summed log-probs and the
        responses' token counts, ``[P, K]`` each; the reference's are ``reference[i]`` for the i-th micro-batch when
        given (what this scorer computed for the reference on the same batches: the same numbers, one forward)."""
        device = next(self.policy.parameters()).device
        for i, start in enumerate(range(0, len(group_ids), micro_groups)):
            groups = self.reader.read(group_ids[start : start + micro_groups])
            batch = collate(groups, self.pad_id, self.row_tokens, self.plan.share_prompts).to(device)
            policy = batch.gather(packed_logps(self.policy, batch.packed, self.plan)).float().cpu()
            if reference is not None:
                ref = torch.tensor(reference[i], dtype=torch.float32)
            elif self.policy is self.reference:
                ref = policy
            else:
                ref = batch.gather(packed_logps(self.reference, batch.packed, self.plan)).float().cpu()
            counts = batch.gather(batch.packed.response_lengths.float())
            cpu = torch.device("cpu")
            yield groups, batch.to(cpu), policy, ref, counts.cpu()

    @torch.no_grad()
    def score(self, group_ids: list[int], beta: float, micro_groups: int) -> tuple[float, dict[str, list[float]]]:
        """Implicit-reward accuracy of the policy on ``group_ids`` (NaN where no pair of responses is ordered by
        its labels: all scores equal), and its anchor-minus-negative reward margins by the negative's origin."""
        correct = pairs = 0.0
        margins: dict[str, list[float]] = {}
        for groups, batch, policy, ref, _ in self._rewards(group_ids, micro_groups):
            rewards = beta * (policy - ref)
            c, p = implicit_accuracy(rewards, batch)
            correct, pairs = correct + c, pairs + p
            members = [m for g in groups for m in g["members"]]
            for member, r in zip(members, rewards):
                for origin, value in zip(member["origins"][1:], r[1 : len(member["origins"])]):
                    margins.setdefault(origin, []).append(float(r[0] - value))
        return correct / pairs if pairs else float("nan"), margins

    @torch.no_grad()
    def preference_accuracy(
        self, group_ids: list[int], tc: TrainConfig, reference: list | None = None
    ) -> tuple[dict[str, float], list]:
        """Held-out preference accuracy on ``group_ids``: how often the policy's implicit reward (as ``tc`` trains
        it: summed or per-token log-ratios, R-DPO's length term) ranks the preferred response of a label-ordered
        pair higher, over all such pairs (``implicit_accuracy``) and over those of similar length
        (``lc_accuracy``), with the pair counts; NaN where there are none. Also the policy's summed log-probs per
        micro-batch: scored as the reference, they are the ``reference`` of later calls on the same groups."""
        sums: Counter = Counter()
        logps = []
        for _, batch, policy, ref, counts in self._rewards(group_ids, tc.micro_groups, reference):
            logps.append(policy.tolist())
            policy, ref = implicit_logps(tc, policy, ref, counts)
            sums.update(reward_metric_sums(tc.beta * (policy - ref), batch, counts))
        figures = ratios(sums)
        return {
            "implicit_accuracy": figures["accuracy"],
            "lc_accuracy": figures["lc_accuracy"],
            "test_pairs": sums["accuracy_pairs"],
            "test_lc_pairs": sums["lc_pairs"],
        }, logps
