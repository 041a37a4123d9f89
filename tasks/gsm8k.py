"""GSM8K: grade-school word problems with a numeric answer (openai/gsm8k; tested on GSM8K Platinum)."""

import rewards
from plumbing.arithmetic import parse_number
from plumbing.data import check, hub_dataset

SYSTEM_PROMPT = r"""Solve the math problem below. Reason step by step inside <think> </think> tags.
Then write the final answer inside <answer> </answer> tags, as a single number or expression wrapped in \boxed{}:
<think>
your reasoning
</think>
<answer>
\boxed{the final answer}
</answer>
"""

reward, accuracy = rewards.gsm8k_reward, rewards.gsm8k_correct
REWARD_RANGE = (0.0, 4.0)  # r(o) of any completion and reference (rewards.py)
EXAMPLE_ROW = {"question": "Tom has 3 boxes of 24 pencils. How many pencils?", "answer": "3 * 24 = 72\n#### 72"}


def question(item, compact=False):
    return item["question"]


def answer(item):
    return item["answer"]


def problem_key(item):
    return item["question"]


def parse_row(where, row):
    for field in ("question", "answer"):
        check(isinstance(row.get(field), str) and row[field].strip(), where, f"field '{field}' missing or empty")
    final = row["answer"].split("####")[-1].strip()  # the hub's answers end in "#### 72"; a bare number is accepted too
    check(parse_number(final) is not None, where, f"field 'answer' has no final number: {final[:40]!r}")
    return {"question": row["question"], "answer": final.replace(",", "")}


def load_hub(split):
    """train: openai/gsm8k; test: madrylab/gsm8k-platinum (GSM8K's test set with its label errors
    fixed or removed), every item, as in the released run."""
    if split == "train":
        name, rows = "openai/gsm8k", hub_dataset("openai/gsm8k", "main", split="train")
    else:
        name, rows = "madrylab/gsm8k-platinum", hub_dataset("madrylab/gsm8k-platinum", split="test")
    return [parse_row(f"{name}[{split}] row {i}", r) for i, r in enumerate(rows)]
