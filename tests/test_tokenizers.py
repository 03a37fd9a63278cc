"""Tokenizers of other families (built offline, tests/zoo.py): chat templates, BOS/EOS once, no pad token."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from configs.schema import load_config
from pipeline import frames, stages, task
from pipeline.read import check_batch, read_piece, source_spec, task_rows, templated
from pipeline.tokenize import chat_renderer, encode_prompt, pad_token_id, response_end_id, user_prompt
from tests.conftest import ROOT
from tests.zoo import build_model, tokenizer_like
from training.batches import collate, pack_groups

MESSAGES = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "What is 2 plus 3?"},
    {"role": "assistant", "content": "5"},
    {"role": "user", "content": "And 4 plus 4?"},
]


def _template_ids(tokenizer, messages) -> list[int]:
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def _prepared(tokenizer, tmp_path, *overrides):
    """Conversational rows through the prepare job's reading and tokenizing functions."""
    source = tmp_path / "chat.jsonl"
    source.write_text(
        "\n".join(
            json.dumps({"messages": [*MESSAGES[: k + 1], {"role": "assistant", "content": a}]})
            for k, a in ((1, "5"), (3, "8"))
        )
        + "\n"
    )
    cfg = load_config(ROOT / "configs/tiny.yaml", [f"data.source={source}", *overrides])
    model_dir = _saved(tokenizer, tmp_path)
    spec, (piece,) = source_spec(cfg, model_dir)
    rows = frames.as_lists(check_batch(pa.concat_tables(read_piece(piece, None)), spec).to_pandas())
    is_templated = templated(cfg, spec, model_dir)
    end_id = response_end_id(tokenizer, cfg.data.chat_template, is_templated)  # as the prepare graph does
    return stages.tokenize_records(
        rows, tokenizer, max_length=512, on_overlength="error", templated=is_templated, end_id=end_id
    ), is_templated


def _saved(tokenizer, tmp_path) -> str:
    """Workers load the tokenizer (and its chat template) from the model's directory, as the prepare job does."""
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    return str(tmp_path / "tokenizer")


def test_llama3_chat_prompts_are_the_templates_ids_with_one_bos(tmp_path):
    tok = tokenizer_like("llama3")
    rows, templated = _prepared(tok, tmp_path)
    assert templated
    for ids, n in zip(rows["prompt_ids"], (2, 4)):
        # these ids go to vLLM (prompt_token_ids), the reference scorer and the trainer unchanged, through the shards
        assert list(ids) == _template_ids(tok, MESSAGES[:n])
        assert list(ids).count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id
    for responses in rows["response_ids"]:
        assert list(responses[0]).count(tok.eos_token_id) == 1 and responses[0][-1] == tok.eos_token_id


def test_chatml_prompts_carry_no_bos_and_the_generation_prompt(tmp_path):
    tok = tokenizer_like("chatml")
    rows, _ = _prepared(tok, tmp_path)
    assert list(rows["prompt_ids"].iloc[1]) == _template_ids(tok, MESSAGES)
    assert tok.decode(rows["prompt_ids"].iloc[1]).endswith("<|im_start|>assistant\n")


def test_responses_end_with_the_templates_end_of_turn_where_eos_is_another_token(tmp_path):
    # Qwen2.5 base and Llama-3 base: the chat template ends a turn with <|im_end|> / <|eot_id|>, EOS is another token
    for kind, eos, end in (("chatml", "<|endoftext|>", "<|im_end|>"), ("llama3", "<|im_end|>", "<|eot_id|>")):
        tok = tokenizer_like(kind)
        if kind == "llama3":
            tok.add_special_tokens({"additional_special_tokens": [eos]})
        tok.eos_token = eos
        end_id = tok.convert_tokens_to_ids(end)
        assert tok.eos_token_id != end_id and response_end_id(tok, "auto", templated=True) == end_id
        assert response_end_id(tok, "auto", templated=False) == tok.eos_token_id  # a plain prompt: EOS
        (tmp_path / kind).mkdir()
        rows, is_templated = _prepared(tok, tmp_path / kind)
        assert is_templated
        for responses in rows["response_ids"]:
            assert responses[0][-1] == end_id and tok.eos_token_id not in list(responses[0])
    plain = tokenizer_like("plain")
    assert response_end_id(plain, "auto", templated=True) == plain.eos_token_id  # no template: EOS


def test_no_template_uses_the_plain_layout_and_none_overrides_a_template(tmp_path):
    rows, templated = _prepared(tokenizer_like("plain"), tmp_path)
    assert not templated and rows["prompt"].iloc[0].endswith("\n\nHuman: What is 2 plus 3?\n\nAssistant:")
    rows, templated = _prepared(tokenizer_like("llama3"), tmp_path, "data.chat_template=none")
    assert not templated and rows["prompt"].iloc[0].startswith("\n\nSystem:")
    # a plain prompt gets the tokenizer's own prefix once: Llama-3's BOS
    assert list(rows["prompt_ids"].iloc[0]).count(tokenizer_like("llama3").bos_token_id) == 1


def test_chat_template_from_a_jinja_file(tmp_path):
    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}[assistant] ")
    rows, templated = _prepared(tokenizer_like("plain"), tmp_path, f"data.chat_template={template}")
    assert (
        templated and rows["prompt"].iloc[0] == "[system] You answer briefly.\n[user] What is 2 plus 3?\n[assistant] "
    )
    with pytest.raises(FileNotFoundError, match="data.chat_template"):
        chat_renderer(tokenizer_like("plain"), str(tmp_path / "missing.jinja"))


def test_embedded_task_prompts_are_rendered_as_one_user_message_and_still_scored(tmp_path):
    tok = tokenizer_like("llama3")
    cfg = load_config(ROOT / "configs/tiny.yaml")
    model_dir = _saved(tok, tmp_path)
    table = task_rows(pa.table({"id": [0]}), cfg.seed, cfg.task.model_dump_json(), model_dir, cfg.data.chat_template)
    raw = task.splits(cfg.seed, cfg.task)[0][0]
    prompt = table["prompt"][0].as_py()
    assert templated(cfg, None, model_dir) and prompt.startswith("<|begin_of_text|><|start_header_id|>user")
    text, flag = user_prompt(raw["prompt"], chat_renderer(tok, "auto"))
    assert text == prompt and encode_prompt(tok, text, flag) == _template_ids(
        tok, [{"role": "user", "content": raw["prompt"]}]
    )
    assert task.solve(prompt) == task.solve(raw["prompt"])  # the task's reward reads the rendered prompt


def test_tokenizer_without_pad_token_packs_with_eos_and_never_grows_the_vocabulary():
    tok = tokenizer_like("chatml")
    assert tok.pad_token_id is None and pad_token_id(tok) == tok.eos_token_id
    vocab = len(tok)
    rows = pd.DataFrame(
        {
            "group_id": [0],
            "group_position": [0],
            "group_size": [1],
            "origins": [["chosen", "rejected"]],
            "scores": [None],
            "rank": [None],
            "ref_logps": [None],
            "group_similarity": [[1.0]],
            "prompt_ids": [encode_prompt(tok, "hi")],
            "response_ids": [[[5, 6, tok.eos_token_id], [7, tok.eos_token_id]]],
        }
    )
    batch = collate(pack_groups(rows), pad_token_id(tok), row_tokens=4, share_prompts=False)  # rows need padding
    assert (batch.packed.input_ids == tok.eos_token_id).any() and len(tok) == vocab


def test_reward_model_without_pad_token_scores_a_batch(tmp_path):
    """A reward model whose config has no pad_token_id used to fail on any batch of more than one text."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from actors.reward_model import RewardModelScores

    tok = tokenizer_like("llama3")
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_labels=1,
        pad_token_id=None,
    )
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    rows = pd.DataFrame(
        {
            "id": ["a"],
            "prompt": ["Say hi.\n"],
            "responses": [["hi", "hello there", "h"]],
            "origins": [["dataset"] * 3],
            "scores": [[]],
            "source": "t",
            "row": [1],
        }
    )
    rows = stages.tokenize_records(rows, tok, max_length=64, on_overlength="error")
    scorer = RewardModelScores(str(tmp_path))
    scores = list(scorer(rows)["scores"].iloc[0])
    model = LlamaForSequenceClassification.from_pretrained(tmp_path).eval()
    model.config.pad_token_id = scorer.tokenizer.pad_token_id  # pooled where the batch pools: as a reward trainer pools
    texts = scorer.texts(["Say hi.\n"] * 3, ["hi", "hello there", "h"])  # Llama-3's chat template
    with torch.no_grad():
        alone = [model(**tok([t], return_tensors="pt", add_special_tokens=False)).logits[0, 0].item() for t in texts]
    np.testing.assert_allclose(scores, alone, atol=1e-4)


def test_zoo_model_loads_with_the_no_pad_tokenizer():
    tok = tokenizer_like("chatml")
    model = build_model("qwen2", len(tok), tokenizer=tok)
    assert model.config.pad_token_id is None and model.config.eos_token_id == tok.eos_token_id


def test_pad_id_the_model_cannot_embed_falls_back_to_eos(tmp_path):
    """transformers loads any tokenizer beside a Qwen2 config as Qwen2Tokenizer, whose default pad token
    <|endoftext|> is appended past the model's embeddings when the vocabulary lacks it."""
    from transformers import AutoTokenizer

    tok = tokenizer_like("llama3")
    model = build_model("qwen2", len(tok), tokenizer=tok)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    n = model.get_input_embeddings().num_embeddings
    assert loaded.pad_token_id >= n
    assert pad_token_id(loaded, n) == loaded.eos_token_id < n
