"""MATH: competition problems graded by math-verify (trained on MATH levels 1-4, tested on MATH-500)."""

import rewards
from plumbing.data import DataError, check, hub_dataset
from tasks.gsm8k import SYSTEM_PROMPT, answer, problem_key, question  # noqa: F401 (items and system turn as GSM8K's)

reward, accuracy = rewards.math_reward, rewards.math_correct
REWARD_RANGE = (0.0, 4.0)  # r(o) of any completion and reference (rewards.py)
EXAMPLE_ROW = {"problem": "What is $1 - \\frac{1}{2}$?", "solution": "$1 - \\frac{1}{2} = \\boxed{\\frac{1}{2}}$"}


def parse_row(where, row):
    q = row.get("problem", row.get("question"))
    check(isinstance(q, str) and q.strip(), where, "field 'problem' missing or empty")
    ans = row.get("answer")
    if ans is None and isinstance(row.get("solution"), str):
        ans = rewards.first_boxed(row["solution"])  # the first \\boxed{}, as the released loader takes it
    check(isinstance(ans, str) and ans.strip(), where, "field 'answer' missing (and no \\boxed{} in 'solution')")
    return {"question": q, "answer": ans.strip(), "level": row.get("level")}


def load_hub(split):
    """test: HuggingFaceH4/MATH-500; train: qwedsacf/competition_math (MATH's 12.5k train and test
    problems) minus the MATH-500 problems, levels 1-4 (level 5 is out of LLaDA's reach)."""
    test_rows = hub_dataset("HuggingFaceH4/MATH-500", split="test")
    held_out = [parse_row(f"HuggingFaceH4/MATH-500 row {i}", r) for i, r in enumerate(test_rows)]
    if split == "test":
        return held_out
    seen, items = {it["question"] for it in held_out}, []
    for i, r in enumerate(hub_dataset("qwedsacf/competition_math", split="train")):
        if r.get("problem") in seen or str(r.get("level") or "")[-1:] not in set("01234"):
            continue
        try:
            items.append(parse_row(f"qwedsacf/competition_math row {i}", r))
        except DataError:  # no \\boxed{} answer in the solution: the released loader drops these too
            pass
    return items
