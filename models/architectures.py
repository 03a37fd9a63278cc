"""Which Hugging Face architectures are computed exactly, and how: shared-prompt block masks where the attention
takes an arbitrary mask, the plain linear head the chunked log-probs need; anything else is refused by name."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


class UnsupportedModel(ValueError):
    """A model this project cannot score exactly; raised before any work starts."""


# Architectures whose forward pass tests/test_conformance.py proves exact with the shared-prompt block masks built
# here (eager and sdpa), and those whose logits are ``hidden @ lm_head.weight.T`` with nothing after the head.
SHARED_PROMPT_ARCHITECTURES = frozenset(
    {
        "llama",
        "mistral",
        "mixtral",
        "qwen2",
        "qwen2_moe",
        "qwen3",
        "qwen3_moe",
        "gemma2",
        "gemma3_text",
        "granite",
        "phi3",
        "gpt2",
        "olmo2",
    }
)


PLAIN_HEAD_ARCHITECTURES = frozenset(
    {
        "llama",
        "mistral",
        "mixtral",
        "qwen2",
        "qwen2_moe",
        "qwen3",
        "qwen3_moe",
        "phi3",
        "gpt2",
        "olmo2",
    }
)


# Recurrent and hybrid models: state flows from token to token outside attention, so no attention mask can
# keep one response from seeing another; the project does not score them.
RECURRENT_ARCHITECTURES = frozenset(
    {
        "mamba",
        "mamba2",
        "falcon_mamba",
        "jamba",
        "bamba",
        "zamba",
        "zamba2",
        "falcon_h1",
        "rwkv",
        "recurrent_gemma",
        "lfm2",
        "lfm2_moe",
        "qwen3_next",
        "granitemoehybrid",
        "nemotron_h",
        "xlstm",
        "minimax",
    }
)


MASKED_LAYER_TYPES = ("full_attention", "sliding_attention")


MASK_BACKENDS = ("eager", "sdpa")  # attention implementations that take an arbitrary 4-D mask as given


@dataclass(frozen=True)
class ForwardPlan:
    """How responses of one model are laid out and scored (see :func:`forward_plan`)."""

    architecture: str
    share_prompts: bool  # prompts forwarded once with block masks; else one prompt + response per row
    layer_windows: dict[str, int | None]  # sliding window (None: full) per layer type, for the block masks
    plain_head: bool  # logits = hidden @ lm_head.weight.T: the chunked head is exact
    note: str = ""  # why prompts are not shared, for the job's log

    def describe(self) -> str:
        layout = "shared-prompt block masks" if self.share_prompts else f"one sequence per row ({self.note})"
        head = "chunked lm_head" if self.plain_head else "the model's own head"
        return f"{self.architecture}: {layout}, {head}"


def _layer_types(config) -> list[str]:
    types = getattr(config, "layer_types", None)
    if types:
        return list(types)
    window = getattr(config, "sliding_window", None)
    sliding = window is not None and getattr(config, "use_sliding_window", True) is not False
    return ["sliding_attention" if sliding else "full_attention"]


def check_architecture(config) -> None:
    """Refuse, naming the architecture and the reason, a model whose response log-probs cannot be computed exactly."""
    arch = getattr(config, "model_type", type(config).__name__)
    if getattr(config, "is_encoder_decoder", False):
        raise UnsupportedModel(f"model type {arch!r} is an encoder-decoder; the project trains causal language models")
    if arch in RECURRENT_ARCHITECTURES:
        raise UnsupportedModel(
            f"model type {arch!r} has recurrent layers: their state would carry one response into "
            "the next, so its log-probs cannot be computed exactly here"
        )
    other = sorted(set(_layer_types(config)) - set(MASKED_LAYER_TYPES))
    if other:
        raise UnsupportedModel(
            f"model type {arch!r} has layer types {other}; only {list(MASKED_LAYER_TYPES)} are supported"
        )


def forward_plan(model_or_config) -> ForwardPlan:
    """The exact way to score ``model``: shared-prompt block masks for architectures proven exact with them under
    eager or sdpa attention, else one sequence per row with the model's own masks; the chunked head only where
    the logits are the plain ``lm_head``. Raises :class:`UnsupportedModel` for what neither handles."""
    config = getattr(model_or_config, "config", model_or_config)
    check_architecture(config)
    arch = config.model_type
    backend = getattr(config, "_attn_implementation", None) or "sdpa"
    note = ""
    if arch not in SHARED_PROMPT_ARCHITECTURES:
        note = f"block masks are not verified for {arch!r}"
    elif backend not in MASK_BACKENDS:
        note = f"attention implementation {backend!r} takes no custom block mask"
    window = getattr(config, "sliding_window", None)
    windows = {t: (window if t == "sliding_attention" else None) for t in _layer_types(config)}
    model = model_or_config if isinstance(model_or_config, nn.Module) else None
    return ForwardPlan(
        architecture=arch,
        share_prompts=not note,
        layer_windows=windows,
        plain_head=arch in PLAIN_HEAD_ARCHITECTURES and (model is None or _plain_linear_head(model)),
        note=note,
    )


def _plain_linear_head(model: nn.Module) -> bool:
    """The head is a bias-free Linear whose weight is local (ZeRO-3's hooks gather it only for a module call)."""
    head = model.get_output_embeddings()
    return isinstance(head, nn.Linear) and head.bias is None and not hasattr(head.weight, "ds_id")
