"""The embedded task: deterministic, disjoint splits, verifiable answers, graded reward."""

from __future__ import annotations

import pytest

from pipeline import task

FAMILIES = list(task.FAMILIES)


def test_generation_is_deterministic_and_splits_are_disjoint():
    a_train, a_held = task.generate(3, 500, 100, FAMILIES)
    b_train, b_held = task.generate(3, 500, 100, FAMILIES)
    assert a_train == b_train and a_held == b_held
    assert len(a_train) == 500 and len(a_held) == 100
    assert not {r["prompt"] for r in a_train} & {r["prompt"] for r in a_held}
    other, _ = task.generate(4, 500, 100, FAMILIES)
    assert other != a_train


def test_every_family_is_present_and_answers_verify():
    train, _ = task.generate(0, 600, 60, FAMILIES)
    assert {r["family"] for r in train} == set(FAMILIES)
    for r in train:
        assert task.family_of(r["prompt"]) == r["family"]
        assert task.solve(r["prompt"]) == r["response"]
        assert task.reward(r["prompt"], r["response"]) == 1.0
        assert task.exact_match(r["prompt"], " " + r["response"] + "\n")


@pytest.mark.parametrize(
    "prompt, answer, expected",
    [
        ("Add 12 and 30.\nAnswer: ", "42", 1.0),
        ("Add 12 and 30.\nAnswer: ", "43", 0.5),
        ("Say bako again.\nAnswer: ", "bak", 0.75),
        ("Sort the digits: 3 1 2\nAnswer: ", "1 2 3", 1.0),
        ("Reverse the word: abcd\nAnswer: ", "dcb", 0.75),
        ("Uppercase the word: sum\nAnswer: ", "SUM", 1.0),
        ("Which is the biggest of 5 9 2?\nAnswer: ", "", 0.0),
        ("How many letters are in bada?\nAnswer: ", "4", 1.0),
    ],
)
def test_reward_gives_partial_credit_in_unit_interval(prompt, answer, expected):
    assert task.reward(prompt, answer) == pytest.approx(expected)


def test_sampled_answers_get_a_spread_of_rewards():
    train, _ = task.generate(0, 200, 10, FAMILIES)
    rewards = {task.reward(r["prompt"], r["response"][:-1] or "x") for r in train}
    assert len(rewards) > 5 and all(0.0 <= x < 1.0 for x in rewards)


def test_unknown_prompt_and_family_are_errors():
    with pytest.raises(ValueError, match="not from the embedded task"):
        task.solve("Tell me a joke.")
    with pytest.raises(ValueError, match="unknown task families"):
        task.generate(0, 10, 10, ["add", "poetry"])


def test_demonstrator_slips_replace_answers_in_train_rows_only():
    clean_train, clean_held = task.generate(5, 600, 60, FAMILIES)
    train, held = task.generate(5, 600, 60, FAMILIES, demonstrator_error=0.5)
    assert [r["prompt"] for r in train] == [r["prompt"] for r in clean_train]  # the prompts do not move
    assert held == clean_held and all(r["response"] == task.solve(r["prompt"]) for r in held)
    slipped = [r for r in train if r["response"] != task.solve(r["prompt"])]
    assert 0.4 < len(slipped) / len(train) < 0.6
    assert {r["family"] for r in slipped} == set(FAMILIES)
    for r in slipped:
        # A slip is the family's typical wrong answer: graded below 1 by the reward, which still knows the answer.
        assert r["response"] == task.demonstrator_slip(r["prompt"])
        assert task.reward(r["prompt"], r["response"]) < 1.0


@pytest.mark.parametrize(
    "prompt, slip",
    [
        ("Add 12 and 30.\nAnswer: ", "43"),
        ("Sort the digits: 3 1 2\nAnswer: ", "3 2 1"),
        ("Say bako again.\nAnswer: ", "bak"),
        ("Uppercase the word: sum\nAnswer: ", "Sum"),
        ("Which is the biggest of 5 9 2?\nAnswer: ", "2"),
        ("How many letters are in bada?\nAnswer: ", "5"),
        ("Reverse the word: abcd\nAnswer: ", "abcd"),
    ],
)
def test_each_family_has_a_systematic_slip(prompt, slip):
    assert task.demonstrator_slip(prompt) == slip


def test_demonstrator_error_outside_unit_interval_is_an_error():
    with pytest.raises(ValueError, match="demonstrator_error"):
        task.generate(0, 10, 10, FAMILIES, demonstrator_error=1.5)


def test_task_scores_count_slips_apart_from_other_errors():
    from training.answer_scores import task_scores

    prompts = ["Which is the biggest of 5 9 2?\nAnswer: "] * 3 + ["Largest number in: 4 4 4\nAnswer: "]
    scores = task_scores(prompts, ["9", "2", "7", "4"])  # right, the slip (the minimum), another error, right
    assert scores["exact_match"] == 0.5 and scores["slip_rate"] == 0.25  # where slip == answer it is right, not a slip


def test_task_scores_give_exact_match_per_family():
    from training.answer_scores import task_scores

    prompts = ["Which is the biggest of 5 9 2?\nAnswer: "] * 2 + [CHAT_ADD] * 3
    scores = task_scores(prompts, ["9", "2", "The answer is 42.", "The answer is 41.", "The answer is 42."])
    assert scores["exact_match[max]"] == 0.5 and scores["exact_match[add]"] == pytest.approx(2 / 3)
    assert scores["exact_match"] == pytest.approx(3 / 5) and len([k for k in scores if "[" in k]) == 2


CHAT_ADD = "What is 17 plus 25?\nReply in the form: The answer is <number>."
CHAT_SORT = (
    "Put these digits in ascending order: 1 2 6 4 9\nReply in the form: The answer is <digits, separated by spaces>."
)
CHAT_UPPER = "Uppercase the word: nokevos\nReply in the form: The answer is <word>."


@pytest.mark.parametrize(
    "prompt, reply, expected",
    [
        (CHAT_ADD, "The answer is 42.", 1.0),
        (CHAT_ADD, " The answer is 42\n", 1.0),  # white space and the final full stop aside, the instructed form
        (CHAT_ADD, "42", task.NEAR_MISS),  # right, in another form
        (CHAT_ADD, "17 + 25 = 42.", task.NEAR_MISS),  # right, and chatty
        (CHAT_ADD, "The answer is 41.", 0.0),
        (CHAT_ADD, "17 + 25 = 32.", 0.0),
        (CHAT_ADD, "The answer is 42? No: 17 + 25 = 41.", 0.0),  # wrong, though the right number stands elsewhere in it
        (CHAT_ADD, "", 0.0),
        (CHAT_SORT, "The answer is 1 2 6 4 9.", 0.0),  # the digits unsorted: edit similarity paid 0.78 for this
        (CHAT_SORT, "The answer is 1 2 4 6 9.", 1.0),
        (CHAT_SORT, "Sorted: 1, 2, 4, 6, 9.", task.NEAR_MISS),
        (CHAT_UPPER, "The answer is NOKEVOS.", 1.0),
        (CHAT_UPPER, 'In capitals: "NOKEVOS".', task.NEAR_MISS),
        (CHAT_UPPER, "The answer is nokevos.", 0.0),
        (CHAT_UPPER, "NOKEVOS is nokevos", 0.0),
    ],
)
def test_the_chat_verifier_pays_the_exact_form_then_a_right_final_answer_and_never_a_wrong_one(prompt, reply, expected):
    assert task.reward(prompt, reply) == expected
    assert task.exact_match(prompt, reply) == (expected == 1.0)


def test_no_wrong_chat_answer_pays_more_than_a_near_miss_of_the_right_one():
    train, _ = task.generate(1, 300, 10, list(task.FAMILIES), form="chat")
    assert {r["family"] for r in train} == set(task.FAMILIES)
    for r in train:
        answer, slip = task.solve(r["prompt"]), task.FAMILIES[r["family"]][3](task._parse(r["prompt"])[1])
        assert task.family_of(r["prompt"]) == r["family"]
        assert r["response"] == f"The answer is {answer}." and task.reward(r["prompt"], r["response"]) == 1.0
        near_miss = task.reward(r["prompt"], f"Here it is: {answer}")
        assert near_miss == task.NEAR_MISS
        if slip != answer:  # wrong answers, in the form or chatty, and the right one followed by a wrong one
            for wrong in (task.demonstrator_slip(r["prompt"]), f"Here it is: {slip}", f"{answer}? No, {slip}"):
                assert task.reward(r["prompt"], wrong) == 0.0 < near_miss


def test_one_seed_draws_the_same_questions_in_both_forms_and_each_form_parses_when_rendered():
    cue, _ = task.generate(2, 60, 10, FAMILIES)
    chat, _ = task.generate(2, 60, 10, FAMILIES, form="chat")
    assert [task.solve(r["prompt"]) for r in cue] == [task.solve(r["prompt"]) for r in chat]
    for a, b in zip(cue, chat):
        assert a["prompt"].split("\n")[0] == b["prompt"].split("\n")[0]
        rendered = (
            f"<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n{b['prompt']}<|im_end|>\n"
            "<|im_start|>assistant\n"
        )
        assert task.response(rendered) == b["response"] and task.reward(rendered, b["response"]) == 1.0
    with pytest.raises(ValueError, match="unknown task form"):
        task.generate(0, 10, 10, FAMILIES, form="essay")


def test_paired_differences_are_per_prompt_means_with_a_t_interval():
    from training.answer_scores import paired_differences

    reference = {"exact_match": [0.0, 0.0, 1.0, 1.0], "mean_reward": [0.0, 0.25, 1.0, 1.0]}
    policy = {"exact_match": [1.0, 1.0, 1.0, 0.0], "mean_reward": [1.0, 1.0, 1.0, 0.25]}
    out = paired_differences(reference, policy)
    assert out["exact_match_diff"] == pytest.approx(0.25)  # differences 1, 1, 0, -1
    sd = (((1 - 0.25) ** 2 * 2 + 0.25**2 + 1.25**2) / 3) ** 0.5
    assert out["exact_match_diff_ci95"] == pytest.approx(3.182446 * sd / 2, rel=1e-5)  # t(0.975, 3) = 3.1824
    assert out["mean_reward_diff"] == pytest.approx((1 + 0.75 + 0 - 0.75) / 4)
