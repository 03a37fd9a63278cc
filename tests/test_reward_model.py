"""The reward model reads each answer as it was trained to: in its own chat template, with the response whole."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

from actors.reward_model import RewardModelScores

TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"


@pytest.fixture(scope="module")
def chat_reward_dir(tiny_model_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("chat_reward")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = TEMPLATE
    LlamaForSequenceClassification(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_labels=1,
            max_position_embeddings=48,
        )
    ).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_the_reward_model_reads_its_own_chat_template_with_the_turn_ended(chat_reward_dir):
    (text,) = RewardModelScores(chat_reward_dir).texts(["What is 2+2?"], ["4"])
    assert text == "<|user|>What is 2+2?<|end|><|assistant|>4<|end|>"


def test_a_prompt_longer_than_the_reward_model_reads_loses_its_start_not_the_response(chat_reward_dir):
    scorer = RewardModelScores(chat_reward_dir)
    long_prompt = "word " * 200
    first, second = scorer.score_texts([long_prompt] * 2, ["the first answer", "a different reply entirely"])
    assert first != second  # cut on the right, both would be the same prompt prefix and score the same
    enc = scorer.tokenizer(
        scorer.texts([long_prompt], ["the first answer"]),
        truncation=True,
        max_length=scorer.max_tokens,
        add_special_tokens=False,
    )
    assert len(enc["input_ids"][0]) == 48 and scorer.tokenizer.decode(enc["input_ids"][0]).replace(" ", "").endswith(
        "thefirstanswer<|end|>"
    )
