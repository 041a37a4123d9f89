"""Countdown: combine three numbers with + - * / (each once) to reach a target. Generated here
(with a solver), or the released run's data: Jiayi-Pan/Countdown-Tasks-3to4's 3-number items.

An item is {"nums", "target"}; generated items (and file items with a solution) also carry "expr",
a solution: what the base model's SFT reads.
"""

import itertools
import random
import re
from fractions import Fraction

import rewards
from plumbing.data import check, enough, hub_dataset, split_of

SYSTEM_PROMPT = """You are given a list of numbers and a target.
Combine every number exactly once with +, -, * and / (parentheses allowed) so that the result equals the target.
Try combinations systematically inside <think> </think> tags.
Then write the equation inside <answer> </answer> tags in the form "expression = target":
<think>
your reasoning
</think>
<answer>
expression = target
</answer>
For example, with the numbers [4, 11, 6] and the target 50, a correct answer is:
<answer>
11 * 4 + 6 = 50
</answer>
"""

# --- config
num_range = (1, 9)  # Countdown generator: range of the three numbers
target_range = (1, 99)  # Countdown generator: range of the target
# --- end of config

reward, accuracy = rewards.countdown_reward, rewards.countdown_correct
REWARD_RANGE = (-0.5, 4.0)  # r(o) of any completion and reference (rewards.py)
EXAMPLE_ROW = {"nums": [25, 3, 2], "target": 56}  # a row of a local data file (parse_row)


def question(item, compact=False):
    nums, target = item["nums"], item["target"]
    if compact:  # the embedded model's character tokenizer: keep prompts short
        return f"{' '.join(map(str, nums))} -> {target}"
    return f"Target: {target}\nNumbers: {list(nums)}"


def answer(item):
    return item


def problem_key(item):
    return (tuple(sorted(item["nums"])), item["target"])


def check_options(num_range, target_range):
    for key, v in (("num_range", num_range), ("target_range", target_range)):
        ints = (
            isinstance(v, (tuple, list))
            and len(v) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) for x in v)
        )
        if not (ints and 0 <= v[0] <= v[1]):
            raise ValueError(f"--{key}={v!r} must be (low, high) with 0 <= low <= high")


def parse_row(where, row):
    if "nums" not in row and "input" in row:  # the released 3-number test file: {"input": "30,100,93", "output": "23"}
        row = {"nums": row["input"], "target": row.get("output")}
    nums, target = row.get("nums"), row.get("target")
    if isinstance(nums, str):  # CSV: "25 3 2" or "[25, 3, 2]"; anything else in it is not a number list
        listed = re.fullmatch(r"\s*\[?\s*(-?\d{1,12}(?:\s*[,\s]\s*-?\d{1,12})*)\s*\]?\s*", nums)
        nums = [int(x) for x in re.findall(r"-?\d+", listed[1])] if listed else nums
    ints = isinstance(nums, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in nums)
    check(ints and len(nums) == 3, where, f"field 'nums' must be 3 integers, got {str(nums)[:40]}")
    if isinstance(target, str) and re.fullmatch(r"\s*-?\d+\s*", target):  # CSV
        target = int(target)
    check(
        isinstance(target, int) and not isinstance(target, bool),
        where,
        f"field 'target' must be an integer, got {target!r}",
    )
    found = solutions(nums, target)  # one of them is the SFT answer (tools/sft.py)
    return {"nums": nums, "target": target, **({"expr": found[0]} if found else {})}


HUB_TRAIN_ROWS = 20_000  # the released run trains on the 3-number items of the first 20,000 rows


def load_hub(split):
    """Jiayi-Pan/Countdown-Tasks-3to4, 3-number items only: train from its first 20,000 rows, test
    the first 256 3-number items after them (the release's own 3-number test file, from SPG, loads
    as eval_file; train.py then drops its problems from training, as the release does)."""
    rows = hub_dataset("Jiayi-Pan/Countdown-Tasks-3to4", split="train")
    part = range(min(HUB_TRAIN_ROWS, len(rows))) if split == "train" else range(HUB_TRAIN_ROWS, len(rows))
    items = []
    for i in part:
        if len(rows[i]["nums"]) == 3:
            items.append(parse_row(f"Jiayi-Pan/Countdown-Tasks-3to4 row {i}", rows[i]))
            if split == "test" and len(items) == 256:
                break
    return items


# ---------------------------------------------------------------------------------------------
# the solver and the generator


OPS = "+*--//"  # the operations _values yields, by index: a+b, a*b, a-b, b-a, a/b, b/a


def _values(va, vb):
    """(value, operation index) of every result of two operands, in OPS order; a division by zero
    is left out. Whole operands stay ints (exact and fast), a quotient is a Fraction."""
    out = [(va + vb, 0), (va * vb, 1), (va - vb, 2), (vb - va, 3)]
    if vb != 0:
        out.append((Fraction(va) / vb, 4))
    if va != 0:
        out.append((Fraction(vb) / va, 5))
    return out


def _text(ta, tb, op):
    """The expression text of operation `op` (an OPS index) on operand texts ta, tb: brackets only
    where precedence needs them."""
    a, b = (tb, ta) if op in (3, 5) else (ta, tb)
    symbol = OPS[op]
    if symbol == "+":
        return f"{a}+{b}"
    if symbol == "*":
        return f"{_wrap(a)}*{_wrap(b)}"
    if symbol == "-":
        return f"{a}-{_wrap(b)}"
    return f"{_wrap(a)}/{_wrap(b, True)}"


def _combine(a, b):
    """Every (value, text) reachable from two (value, text) operands."""
    (va, ta), (vb, tb) = a, b
    for v, op in _values(va, vb):
        yield v, _text(ta, tb, op)


def _wrap(t, strict=False):
    return f"({t})" if any(op in t for op in ("+", "-") + (("*", "/") if strict else ())) else t


def solutions(nums, target):
    """All expressions over exactly `nums` (in some order and tree) that equal target."""
    leaves = [(Fraction(n), str(n)) for n in nums]
    found = []
    for i, j in itertools.permutations(range(3), 2):
        k = 3 - i - j
        for ab in _combine(leaves[i], leaves[j]):
            for v, t in _combine(ab, leaves[k]):
                if v == target:
                    found.append(t)
    return found


def _whole(va, vb, op):
    """Operation `op` (an OPS index) on whole numbers when its result is whole, else None (a
    fraction, or x/0): the generator keeps whole results only, so it needs no Fractions."""
    if op < 4:
        return (va + vb, va * vb, va - vb, vb - va)[op]
    num, den = (va, vb) if op == 4 else (vb, va)
    return num // den if den and num % den == 0 else None


def generate(n, seed=0, split=None, unique=False, num_range=num_range, target_range=target_range):
    """n solvable items; each carries "expr", one solution. split: None (any), or only problems of one
    of data.split_of's parts; unique: no problem twice. The ranges default to the config block's."""
    rng = random.Random(seed)
    allowed = list(range(len(OPS)))
    items, seen, attempts = [], set(), 0
    while len(items) < n:
        attempts += 1
        enough(attempts, n, len(items), "Countdown")
        nums = [rng.randint(*num_range) for _ in range(3)]
        i, j = rng.sample(range(3), 2)
        k = 3 - i - j
        # the first operation: any allowed one with a result (_values' order; x/0 has none)
        first_op = rng.choice([op for op in allowed if not (op == 4 and nums[j] == 0 or op == 5 and nums[i] == 0)])
        first_value = _whole(nums[i], nums[j], first_op)
        if first_value is None or first_value <= 0:  # whole, positive intermediate results
            continue
        last_op = rng.choice(allowed)
        value = _whole(first_value, nums[k], last_op)
        if value is None or not target_range[0] <= value <= target_range[1]:
            continue
        key = (sorted(nums), value)
        if (split and split_of(key) != split) or (unique and repr(key) in seen):
            continue
        seen.add(repr(key))
        expr = _text(_text(str(nums[i]), str(nums[j]), first_op), str(nums[k]), last_op)
        items.append({"nums": nums, "target": value, "expr": expr})
        attempts = 0
    return items


def solution(item):
    """A supervised completion for the base model's SFT (tools/sft.py): the equation; None for an item
    without a known solution."""
    if "expr" not in item:
        return None
    return f"<answer>{item['expr']}={item['target']}</answer>"  # the asked "expression = target"
