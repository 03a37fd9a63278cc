"""Tiny random-weight models of many architectures and offline tokenizers that behave like real ones.

Nothing is downloaded: each model is built from its ``transformers`` config class with random weights,
each tokenizer from the project's byte-level vocabulary plus the special tokens and chat template of the
family it imitates. ``python -m tests.zoo NAME DIR`` saves one (``make own-model-demo`` uses it).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tokenizer_like(kind: str) -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with the special tokens and conventions of a tokenizer family, and no pad token:

    - ``llama3``: BOS ``<|begin_of_text|>`` added to every encoding, EOS ``<|eot_id|>``, header-token template
      that writes the BOS itself (as Llama-3's does);
    - ``chatml``: no BOS, EOS ``<|im_end|>``, the ChatML template (Qwen);
    - ``plain``: no BOS, EOS ``<|endoftext|>``, no chat template (GPT-2).
    """
    specials = {
        "llama3": ["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"],
        "chatml": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "plain": ["<|endoftext|>"],
    }[kind]
    vocab = {tok: i for i, tok in enumerate([*specials, *sorted(pre_tokenizers.ByteLevel.alphabet())])}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(specials)
    kwargs = {}
    if kind == "llama3":
        core.post_processor = processors.TemplateProcessing(
            single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B", special_tokens=[("<|begin_of_text|>", 0)]
        )
        kwargs = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "chat_template": LLAMA3_TEMPLATE}
    elif kind == "chatml":
        kwargs = {"eos_token": "<|im_end|>", "chat_template": CHATML_TEMPLATE}
    else:
        kwargs = {"eos_token": "<|endoftext|>"}
    return PreTrainedTokenizerFast(tokenizer_object=core, model_max_length=512, **kwargs)


def _small(**extra) -> dict:
    """Sizes shared by the zoo: head_dim 32 (vLLM-CPU's minimum), two layers, no dropout."""
    return {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 512,
        **extra,
    }


# name -> (config class path, config kwargs). Windows of 4 tokens are shorter than every test sequence.
ARCHITECTURES: dict[str, tuple[str, dict]] = {
    "llama": ("LlamaConfig", _small()),
    "qwen2": ("Qwen2Config", _small()),
    "qwen2_sliding": ("Qwen2Config", _small(use_sliding_window=True, sliding_window=4, max_window_layers=1)),
    "qwen3": ("Qwen3Config", _small(head_dim=32)),
    "mistral": ("MistralConfig", _small(sliding_window=None)),
    "mistral_sliding": ("MistralConfig", _small(sliding_window=4)),
    "gemma2": (
        "Gemma2Config",
        _small(
            head_dim=32,
            sliding_window=4,
            final_logit_softcapping=30.0,
            attn_logit_softcapping=50.0,
            query_pre_attn_scalar=32,
        ),
    ),
    "gemma3": (
        "Gemma3TextConfig",
        _small(
            head_dim=32,
            sliding_window=4,
            final_logit_softcapping=30.0,
            layer_types=["sliding_attention", "full_attention"],
        ),
    ),
    "granite": (
        "GraniteConfig",
        _small(logits_scaling=8.0, embedding_multiplier=12.0, residual_multiplier=0.2, attention_multiplier=0.1),
    ),
    "phi3": ("Phi3Config", _small(sliding_window=4, pad_token_id=None)),
    "gpt2": (
        "GPT2Config",
        {
            "n_embd": 64,
            "n_layer": 2,
            "n_head": 2,
            "n_positions": 512,
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "attn_pdrop": 0.0,
        },
    ),
    "olmo2": ("Olmo2Config", _small()),
    "mixtral": ("MixtralConfig", _small(num_local_experts=4, num_experts_per_tok=2)),
    "qwen2_moe": (
        "Qwen2MoeConfig",
        _small(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64, shared_expert_intermediate_size=64),
    ),
    "cohere": ("CohereConfig", _small(logit_scale=0.5)),  # not in the verified list: one sequence per row
    "mamba": ("MambaConfig", {"hidden_size": 64, "num_hidden_layers": 2, "state_size": 8}),
}


def build_model(name: str, vocab_size: int, attn_implementation: str = "sdpa", seed: int = 0, tokenizer=None):
    """A random-weight model of the named architecture (eval mode, fp32)."""
    import transformers

    cls, kwargs = ARCHITECTURES[name]
    ids = {}
    if tokenizer is not None:
        ids = {
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        }
    config = getattr(transformers, cls)(vocab_size=vocab_size, **{**kwargs, **ids})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation, dtype=torch.float32)
    return model.eval()


def save_own_model(path: str | Path, architecture: str = "mistral", tokenizer_kind: str = "chatml") -> Path:
    """Save a tiny random-weight model and its tokenizer as a user's ``save_pretrained`` directory."""
    path = Path(path)
    tokenizer = tokenizer_like(tokenizer_kind)
    model = build_model(architecture, len(tokenizer), tokenizer=tokenizer)
    model.generation_config.pad_token_id = None
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_task_as_chat(
    path: str | Path, seed: int = 0, n_train: int = 6000, demonstrator_error: float = 0.5, pairs: bool = False
) -> Path:
    """The embedded task's training split as a conversational source: one user message and the demonstrator's
    answer (``messages``), or with ``pairs`` the answer against the family's slip (``chosen``/``rejected``)."""
    import json

    from configs.data import TaskConfig
    from pipeline import task

    train, _ = task.splits(seed, TaskConfig(n_train=n_train, demonstrator_error=0.0 if pairs else demonstrator_error))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for r in train:
            user = {"role": "user", "content": r["prompt"]}
            if pairs:
                slip = task.demonstrator_slip(r["prompt"])
                if slip == r["response"]:
                    continue
                row = {
                    "id": r["id"],
                    "chosen": [user, {"role": "assistant", "content": r["response"]}],
                    "rejected": [user, {"role": "assistant", "content": slip}],
                }
            else:
                row = {"id": r["id"], "messages": [user, {"role": "assistant", "content": r["response"]}]}
            f.write(json.dumps(row) + "\n")
    return path


if __name__ == "__main__":
    # python -m tests.zoo OUT_DIR: the own-model demo's inputs (make own-model-demo)
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/own_model")
    print(f"saved a tiny random-weight Mistral (ChatML template, no pad token) to {save_own_model(out / 'base_model')}")
    print(f"wrote the embedded task as chat messages to {write_task_as_chat(out / 'task_chat.jsonl')}")
    print(f"wrote it as chat preference pairs to {write_task_as_chat(out / 'task_chat_pairs.jsonl', pairs=True)}")
