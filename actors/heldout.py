"""Held-out implicit rewards of a policy against its reference, scored in a Ray actor (never in the driver)."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from actors.device import load_on_device
from models.architectures import forward_plan
from models.logprobs import packed_logps
from pipeline.tokenize import pad_token_id
from training.batches import collate
from training.group_reader import GroupReader
from training.objective import implicit_accuracy


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

    @torch.no_grad()
    def score(self, group_ids: list[int], beta: float, micro_groups: int) -> tuple[float, dict[str, list[float]]]:
        """Implicit-reward accuracy of the policy on ``group_ids`` (NaN where no pair of responses is ordered by
        its labels: all scores equal), and its anchor-minus-negative reward margins by the negative's origin."""
        correct = pairs = 0.0
        margins: dict[str, list[float]] = {}
        device = next(self.policy.parameters()).device
        for start in range(0, len(group_ids), micro_groups):
            groups = self.reader.read(group_ids[start : start + micro_groups])
            batch = collate(groups, self.pad_id, self.row_tokens, self.plan.share_prompts).to(device)
            policy = batch.gather(packed_logps(self.policy, batch.packed, self.plan))
            ref = (
                policy
                if self.policy is self.reference
                else batch.gather(packed_logps(self.reference, batch.packed, self.plan))
            )
            rewards = (beta * (policy - ref)).float().cpu()
            c, p = implicit_accuracy(rewards, batch.to(torch.device("cpu")))
            correct, pairs = correct + c, pairs + p
            members = [m for g in groups for m in g["members"]]
            for member, r in zip(members, rewards):
                for origin, value in zip(member["origins"][1:], r[1 : len(member["origins"])]):
                    margins.setdefault(origin, []).append(float(r[0] - value))
        return correct / pairs if pairs else float("nan"), margins
