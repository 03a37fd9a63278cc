"""The project's own reference model: a byte-level tokenizer and a small Llama built from scratch.

No model can be downloaded here, so the default run makes its own. A byte-level tokenizer
with no merges encodes any text (the embedded task and real data alike) without unknown
tokens; its tokens are single characters for ASCII, which suits arithmetic and string tasks.
The saved directory loads in ``transformers`` and in vLLM.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from configs.data import ModelConfig

BOS, EOS, PAD = "<s>", "</s>", "<pad>"


def build_tokenizer(
    max_length: int, corpus: Iterable[str] | None = None, vocab_size: int = 16384
) -> PreTrainedTokenizerFast:
    """The byte-level tokenizer with no merges; with ``corpus``, byte-level BPE merges learned from it
    up to ``vocab_size`` (a realistic vocabulary for the benchmarks). Special tokens keep ids 0, 1, 2."""
    specials = [PAD, BOS, EOS]
    if corpus is None:
        vocab = {tok: i for i, tok in enumerate([*specials, *sorted(pre_tokenizers.ByteLevel.alphabet())])}
        core = Tokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=False))
        # use_regex=False: with no merges there is nothing to gain from GPT-2's word split.
        core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    else:
        core = Tokenizer(models.BPE())
        core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        core.train_from_iterator(
            corpus,
            trainers.BpeTrainer(
                vocab_size=vocab_size,
                special_tokens=specials,
                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                show_progress=False,
            ),
        )
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, core.token_to_id(BOS))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=max_length,
        padding_side="right",
    )


def build_model(cfg: ModelConfig, tokenizer: PreTrainedTokenizerFast, seed: int) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_length,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def is_saved_model(path: str | Path) -> bool:
    path = Path(path)
    return (path / "config.json").is_file() and (path / "tokenizer.json").is_file()
