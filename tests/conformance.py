"""The conformance measurement of the zoo (tests/zoo.py): for one architecture, attention backend, device and
precision, how far the trainer's and the reference scorer's summed response log-probs, and meanfield's next-token
log-softmax, lie from the model's own forward of each ``prompt + response`` alone.

``tests/test_conformance.py`` asserts it on the CPU in fp32; ``benchmarks/gpu_core.py`` runs it on a GPU in fp32 and
bf16.
"""

from __future__ import annotations

import torch

from models.architectures import forward_plan
from models.logprobs import packed_logps, reference_logps, response_logits
from models.packing import pack_shared_prompts
from tests.zoo import build_model, tokenizer_like

TOKENIZER = tokenizer_like("llama3")
VOCAB = len(TOKENIZER)
REFUSED = {"mamba": "recurrent layers"}


def sample_data():
    """Two prompts with 2 and 3 responses, every sequence longer than the zoo's 4-token sliding windows."""
    g = torch.Generator().manual_seed(0)
    ids = lambda n: torch.randint(5, VOCAB, (n,), generator=g).tolist()  # noqa: E731
    return [ids(7), ids(11)], [[ids(6), ids(9)], [ids(5), ids(12), ids(3)]]


@torch.no_grad()
def direct_forward(model, prompts, responses):
    """Per response: (summed log-prob, [T, V] log-softmax over its positions), each sequence forwarded alone."""
    device = next(model.parameters()).device
    out = []
    for p, rs in zip(prompts, responses):
        for r in rs:
            logits = model(input_ids=torch.tensor([p + r], device=device)).logits[0].double().cpu()
            logp = logits.log_softmax(-1)[len(p) - 1 : len(p) - 1 + len(r)]
            out.append((logp.gather(-1, torch.tensor(r)[:, None]).sum().item(), logp))
    return out


def measure(name: str, backend: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> dict:
    """Max |packed - direct| for the trainer's and the reference scorer's log-probs and meanfield's log-softmax, the
    direct forward in ``dtype`` too; for a precision below fp32 also ``roundoff``: how far that direct forward lies
    from the same model's direct forward in fp32 (the scale a bf16 difference is judged against)."""
    model = build_model(name, VOCAB, backend, tokenizer=TOKENIZER).to(device)
    plan = forward_plan(model)
    prompts, responses = sample_data()
    exact = direct_forward(model, prompts, responses) if dtype != torch.float32 else None
    model = model.to(dtype)
    direct = direct_forward(model, prompts, responses)
    model.train()  # the trainer's mode: dropout is 0 in the zoo, gradients flow
    packed = pack_shared_prompts(prompts, responses, 0, 32, plan.share_prompts)
    trainer = packed_logps(model, packed, plan)
    trainer.sum().backward()  # the trainer's path is differentiable end to end
    model.eval()
    reference = reference_logps(model, prompts, responses, 0, 32, prompts_per_pass=1)
    flat_prompts = [p for p, rs in zip(prompts, responses) for _ in rs]
    meanfield = response_logits(model, flat_prompts, [r for rs in responses for r in rs], 0)
    result = {
        "trainer": max(abs(a - d) for a, (d, _) in zip(trainer.tolist(), direct)),
        "reference": max(abs(a - d) for a, (d, _) in zip(reference, direct)),
        "meanfield": max(
            (m.double().cpu().log_softmax(-1) - d).abs().max().item() for m, (_, d) in zip(meanfield, direct)
        ),
        "plan": plan.describe(),
    }
    if exact is not None:
        result["roundoff"] = max(abs(a - e) for (a, _), (e, _) in zip(direct, exact))
        result["meanfield_roundoff"] = max((a - e).abs().max().item() for (_, a), (_, e) in zip(direct, exact))
    return result
