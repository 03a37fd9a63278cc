"""The embedded default task: prompts with verifiable answers and a graded reward.

Prompts come in families (arithmetic, sorting, string transformations) whose members share
wording, so embedding similarity has related prompts to find (RPO), and the reward gives
partial credit, so groups of sampled answers have a spread of scores (SWEPO). Everything
is a pure function of the seed. The reward re-derives the answer from the prompt text, so
``reward(prompt, response)`` works as a programmatic scorer on any record.

Two forms of prompt (``form``). ``cue``, the toy's: the question, then ``Answer: ``; its reward is graded by edit
similarity, which a model that knows nothing needs to learn from at all. ``chat``, for an instruction-tuned model:
the question, then an instruction that states the form of the answer ("Reply in the form: The answer is <number>."),
rendered as a user message by the model's chat template. Its verifier (:func:`verify`) pays 1 for the exact answer in
that form,
``NEAR_MISS`` for a reply whose final answer is right among other words ("17 + 25 = 42."), and 0 for any wrong
answer, even one that shows the right number elsewhere: a wrong answer never pays more than a near-miss of the
right one (edit similarity fails this: "1 2 6 4 9" for "1 2 4 6 9" earns 0.78).

Training responses can come from an imperfect demonstrator (``demonstrator_error``): with that
probability a row's response is the family's typical slip (minimum for maximum, title case for
upper case, off by one, ...) instead of the answer. That is the setting preference optimisation
exists for: supervised learning imitates the demonstrator, slips included, while the reward
(an exact verifier here) knows better. Held-out rows always carry the exact answer.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence

ANSWER_CUE = "\nAnswer: "
NEAR_MISS = 0.25  # the chat verifier's reward for the right final answer among other words

_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]


def _word(rng: random.Random, lo: int, hi: int) -> str:
    """A pronounceable pseudo-word of lo..hi characters."""
    n = rng.randint(lo, hi)
    return "".join(rng.choice(_SYLLABLES) for _ in range((n + 1) // 2))[:n]


def _numbers(text: str) -> list[int]:
    return [int(t) for t in re.findall(r"\d+", text)]


# Common English words: SmolLM2 copies a word it knows far more often than a pseudo-word (copy_word).
_ENGLISH = (
    "cat dog sun hat pen cup box red map car bed egg fish bird milk book tree star door lamp rain snow wind "
    "road ship boat king frog bell coat desk farm gold hill jump kite leaf moon nest park ring rock salt sand "
    "seed shoe silk soap song swim tent toy wall wolf yard apple bread chair clock cloud dream earth field "
    "flower glass grape green horse house juice lemon light money mouse music night ocean paper party piano "
    "plant queen river robot shirt smile sugar table tiger train water whale world zebra happy quick brave "
    "bright quiet sweet"
).split()

# What the chat verifier reads as a reply's final answer, per kind of answer: the last number, the last run of
# digits, or the last word.
_FINAL = {"number": re.compile(r"\d+"), "digits": re.compile(r"\d(?:[ ,]+\d)*"), "word": re.compile(r"[A-Za-z]+")}
_ANSWER_KIND = {
    "add": "number",
    "max": "number",
    "count": "number",
    "sort": "digits",
    "reverse": "word",
    "copy": "word",
    "upper": "word",
    "add_digits": "number",
    "larger": "number",
    "copy_word": "word",
}
_KIND_WORDS = {"number": "number", "digits": "digits, separated by spaces", "word": "word"}
# The chat form's instruction per family: it states the form the verifier pays 1 for ("The answer is 42."), a
# sentence SmolLM2-135M-Instruct writes of its own accord often enough to learn from (README: the family table).
INSTRUCTIONS = {name: f"Reply in the form: The answer is <{_KIND_WORDS[kind]}>." for name, kind in _ANSWER_KIND.items()}
ANSWER_SENTENCE = "The answer is {}."


# Each family: (templates, make operands, solve from the operands, the demonstrator's slip).
# Templates differ in wording only; solver and slip get the operand text the template's
# placeholder captured. A slip is a plausible systematic mistake that uses the same skill as
# the answer, so a model that imitates both can produce either.
FAMILIES: dict[str, tuple[list[str], Callable[[random.Random], dict], Callable[[str], str], Callable[[str], str]]] = {
    "add": (
        ["Add {a} and {b}.", "What is {a} plus {b}?", "Compute the sum {a} + {b}."],
        lambda rng: {"a": rng.randint(0, 30), "b": rng.randint(0, 30)},
        lambda ops: str(sum(_numbers(ops))),
        lambda ops: str(sum(_numbers(ops)) + 1),
    ),
    "sort": (
        ["Sort the digits: {xs}", "Put these digits in ascending order: {xs}", "Order from small to large: {xs}"],
        lambda rng: {"xs": " ".join(str(rng.randint(0, 9)) for _ in range(rng.randint(3, 5)))},
        lambda ops: " ".join(str(x) for x in sorted(_numbers(ops))),
        lambda ops: " ".join(str(x) for x in sorted(_numbers(ops), reverse=True)),
    ),
    "reverse": (
        ["Reverse the word: {w}", "Write {w} backwards.", "Spell the word {w} in reverse."],
        lambda rng: {"w": _word(rng, 3, 7)},
        lambda ops: ops[::-1],
        lambda ops: ops,
    ),
    "copy": (
        ["Repeat the word: {w}", "Say {w} again.", "Copy the word {w} exactly."],
        lambda rng: {"w": _word(rng, 3, 7)},
        lambda ops: ops,
        lambda ops: ops[:-1],
    ),
    "upper": (
        ["Uppercase the word: {w}", "Write {w} in capital letters.", "Convert {w} to upper case."],
        lambda rng: {"w": _word(rng, 3, 7)},
        lambda ops: ops.upper(),
        lambda ops: ops.capitalize(),
    ),
    "max": (
        ["Largest number in: {xs}", "Which is the biggest of {xs}?", "Find the maximum of {xs}"],
        lambda rng: {"xs": " ".join(str(rng.randint(0, 9)) for _ in range(rng.randint(3, 5)))},
        lambda ops: str(max(_numbers(ops))),
        lambda ops: str(min(_numbers(ops))),
    ),
    "count": (
        ["How many letters are in {w}?", "Count the letters of the word {w}.", "Length of the word {w}:"],
        lambda rng: {"w": _word(rng, 3, 7)},
        lambda ops: str(len(ops)),
        lambda ops: str(len(ops) + 1),
    ),
    # Easier variants, sized for a 135M-parameter instruction model (the README's family table chose them).
    "add_digits": (
        ["What is {a} + {b}?", "What does {a} + {b} make?", "Compute {a} + {b}."],
        lambda rng: {"a": rng.randint(0, 9), "b": rng.randint(0, 9)},
        lambda ops: str(sum(_numbers(ops))),
        lambda ops: str(sum(_numbers(ops)) + 1),
    ),
    "larger": (
        ["Which is larger, {a} or {b}?", "Which number is bigger: {a} or {b}?", "What is the larger of {a} and {b}?"],
        lambda rng: dict(zip("ab", rng.sample(range(100), 2))),
        lambda ops: str(max(_numbers(ops))),
        lambda ops: str(min(_numbers(ops))),
    ),
    "copy_word": (
        ["Repeat this word: {w}", "Say the word {w}.", "Copy this word: {w}"],
        lambda rng: {"w": rng.choice(_ENGLISH)},
        lambda ops: ops,
        lambda ops: ops[:-1],
    ),
}


def _pattern(template: str, tail: str) -> re.Pattern:
    """A template's question on a line of its own, followed by ``tail``; operands never span lines."""
    return re.compile("^" + re.sub(r"\\\{\w+\\\}", "(.+?)", re.escape(template)) + tail, re.M)


# (family, form, pattern): the question ends its line; the chat form's instruction, or the cue form's cue, follows on
# the next.
_PATTERNS = [
    (name, form, _pattern(t, tail))
    for name, (templates, *_) in FAMILIES.items()
    for t in templates
    for form, tail in (("chat", re.escape("\n" + INSTRUCTIONS[name])), ("cue", re.escape(ANSWER_CUE.rstrip())))
]


def _parse(prompt: str) -> tuple[str, str, str]:
    """(family, operand text, form) of a task prompt, plain or rendered by a chat template (whose markup surrounds
    the task's question line)."""
    for name, form, pattern in _PATTERNS:
        m = pattern.search(prompt)
        if m:
            return name, " ".join(m.groups()), form
    raise ValueError(f"prompt is not from the embedded task: {prompt!r}")


def family_of(prompt: str) -> str:
    """The family whose template produced ``prompt``."""
    return _parse(prompt)[0]


def solve(prompt: str) -> str:
    """The verifiable answer of a task prompt."""
    family, operands, _ = _parse(prompt)
    return FAMILIES[family][2](operands)


def response(prompt: str) -> str:
    """The exact response to a task prompt in its form: the bare answer (cue), or the instructed sentence (chat)."""
    family, operands, form = _parse(prompt)
    answer = FAMILIES[family][2](operands)
    return ANSWER_SENTENCE.format(answer) if form == "chat" else answer


def final_answer(family: str, reply: str) -> str | None:
    """The last answer-shaped span of a reply (a number, a run of digits, a word), as the answer's form writes it."""
    kind = _ANSWER_KIND[family]
    spans = _FINAL[kind].findall(reply)
    if not spans:
        return None
    return " ".join(re.findall(r"\d", spans[-1])) if kind == "digits" else spans[-1]


def verify(family: str, answer: str, reply: str) -> float:
    """The chat form's verifier for a reply to a prompt of ``family`` whose answer is ``answer``: 1 for the exact answer
    in the instructed form, "The answer is <answer>." (surrounding white space and the final full stop aside),
    ``NEAR_MISS`` when the reply's final answer is right among other words, else 0."""
    bare = reply.strip()
    if bare in (ANSWER_SENTENCE.format(answer), ANSWER_SENTENCE.format(answer)[:-1]):
        return 1.0
    return NEAR_MISS if final_answer(family, bare) == answer else 0.0


def _similarity(a: str, b: str) -> float:
    """1 - normalised Levenshtein distance: the partial credit of the reward."""
    if a == b:
        return 1.0
    if not a or not b:
        return 0.0
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return 1.0 - prev[-1] / max(len(a), len(b))


def reward(prompt: str, response: str) -> float:
    """Reward in [0, 1], by the prompt's form: the chat form's :func:`verify`; the cue form's 1 for the exact answer
    and partial credit by edit similarity."""
    family, operands, form = _parse(prompt)  # once: reward scores every response prepare makes
    answer = FAMILIES[family][2](operands)
    if form == "chat":
        return verify(family, answer, response)
    return round(_similarity(response.strip(), answer), 6)


def exact_match(prompt: str, response: str) -> bool:
    """Whether the reply is the exact answer (the chat form: in the instructed form)."""
    family, operands, form = _parse(prompt)
    answer = FAMILIES[family][2](operands)
    if form == "chat":
        return verify(family, answer, response) == 1.0
    return response.strip() == answer


def demonstrator_slip(prompt: str) -> str:
    """The demonstrator's slip on a task prompt: its family's typical wrong answer, in the prompt's form."""
    family, operands, form = _parse(prompt)
    slip = FAMILIES[family][3](operands)
    return ANSWER_SENTENCE.format(slip) if form == "chat" else slip


def generate(
    seed: int,
    n_train: int,
    n_heldout: int,
    families: Sequence[str],
    demonstrator_error: float = 0.0,
    form: str = "cue",
) -> tuple[list[dict], list[dict]]:
    """Deterministic train and held-out splits of ``{"id", "prompt", "response", "family"}`` rows.

    Prompts are unique across both splits, so held-out accuracy measures generalisation. A
    train row's response is the demonstrator's slip (:func:`demonstrator_slip`) with probability
    ``demonstrator_error``; the slips are drawn from their own stream, so the prompts do not
    depend on the error rate. ``form``: ``cue`` or ``chat`` (see the module docstring); one seed draws the same
    questions in both.
    """
    if not 0.0 <= demonstrator_error <= 1.0:
        raise ValueError(f"demonstrator_error must be within [0, 1], got {demonstrator_error}")
    unknown = set(families) - set(FAMILIES)
    if unknown:
        raise ValueError(f"unknown task families {sorted(unknown)}; known: {sorted(FAMILIES)}")
    if form not in ("cue", "chat"):
        raise ValueError(f"unknown task form {form!r}: 'cue' or 'chat'")
    rng = random.Random(seed)
    seen: set[str] = set()
    rows: list[dict] = []
    want = n_train + n_heldout
    attempts = 0
    while len(rows) < want:
        attempts += 1
        if attempts > 50 * want:
            raise ValueError(f"cannot draw {want} distinct prompts from families {list(families)}")
        family = families[len(rows) % len(families)]
        templates, make, *_ = FAMILIES[family]
        question = rng.choice(templates).format(**make(rng))
        prompt = question + (ANSWER_CUE if form == "cue" else "\n" + INSTRUCTIONS[family])
        if prompt in seen:
            continue
        seen.add(prompt)
        rows.append(
            {"id": f"task-{seed}-{len(rows)}", "prompt": prompt, "response": response(prompt), "family": family}
        )
    rng.shuffle(rows)
    train = rows[:n_train]
    slips = random.Random(f"{seed}-demonstrator")
    for row in train:
        if slips.random() < demonstrator_error:
            row["response"] = demonstrator_slip(row["prompt"])
    return train, rows[n_train:]


def splits(seed: int, spec) -> tuple[list[dict], list[dict]]:
    """:func:`generate` with the fields of a ``configs.data.TaskConfig``: (training rows, held-out rows). The last
    ``spec.n_validation`` training rows are not among the training rows (see :func:`validation`)."""
    train, heldout = generate(seed, spec.n_train, spec.n_heldout, spec.families, spec.demonstrator_error, spec.form)
    return train[: len(train) - spec.n_validation], heldout


def validation(seed: int, spec) -> list[dict]:
    """The validation split: training prompts carved off before any training, with their exact answers."""
    if not spec.n_validation:
        raise ValueError("task.n_validation is 0: there is no validation split to score on")
    if spec.n_validation >= spec.n_train:
        raise ValueError(f"task.n_validation ({spec.n_validation}) must be below task.n_train ({spec.n_train})")
    train, _ = generate(seed, spec.n_train, spec.n_heldout, spec.families, spec.demonstrator_error, spec.form)
    return [{**row, "response": response(row["prompt"])} for row in train[len(train) - spec.n_validation :]]


def scored_split(seed: int, spec, split: str) -> list[dict]:
    """The prompts (with exact answers) that ``evaluate.split`` names."""
    return validation(seed, spec) if split == "validation" else splits(seed, spec)[1]
