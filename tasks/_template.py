"""A minimal working task to copy (`cp tasks/_template.py tasks/NAME.py`, then `--task=NAME`): repeat the digits of
the question. It has every part tasks/__init__.py lists, a generator with one option, and trains as it is (the
tests train a copy). A name starting with "_" keeps this file itself out of the list of tasks.
"""

import random

import rewards
from plumbing.data import check, split_of

SYSTEM_PROMPT = "Repeat the digits of the question inside <answer> </answer> tags."
REWARD_RANGE = (0.0, 1.0)  # r(o) of any completion and reference: the tests hold reward to it
EXAMPLE_ROW = {"digits": "123"}  # a row of a local data file (parse_row): the tests score against its answer

# --- config
template_digits = 3  # digits a question has (a generator option: a --key=value key; a range ends it) [1, 6]
# --- end of config


def reward(completion, answer):
    """r(o): 1 for the digits repeated inside <answer> tags, else 0 (a real task's lives in rewards.py)."""
    return 1.0 if rewards.extract_answer(completion) == answer else 0.0


def accuracy(completion, answer):
    return float(reward(completion, answer) == 1.0)


def question(item, compact=False):
    return item["digits"]


def answer(item):
    return item["digits"]


def problem_key(item):
    return item["digits"]


def parse_row(where, row):
    check(str(row.get("digits", "")).isdigit(), where, "field 'digits' must be digits")
    return {"digits": str(row["digits"])}


def check_options(template_digits):
    if not 1 <= template_digits <= 6:
        raise ValueError(f"--template_digits={template_digits} must be in 1..6")


def generate(n, seed=0, split=None, unique=False, template_digits=3):
    """n items from the seed; split (data.split_of) keeps test problems out of training."""
    rng, items, seen = random.Random(seed), [], set()
    if unique and n > 10**template_digits:
        raise ValueError(f"--template_digits={template_digits} has fewer than {n} distinct problems")
    while len(items) < n:
        digits = "".join(rng.choice("0123456789") for _ in range(template_digits))
        if (split is None or split_of(digits) == split) and not (unique and digits in seen):
            items.append({"digits": digits})
            seen.add(digits)
    return items
