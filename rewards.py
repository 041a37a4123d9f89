"""Rewards r(o) of the four tasks; the group-relative advantages of agrpo.py are built on them.

Every reward and accuracy function takes (completion, answer) and never raises, whatever the
strings: a reward returns a float in the range below, an accuracy a bool (gsm8k_correct,
math_correct, countdown_correct) or, for Sudoku, a float in [0, 1]. Nothing here calls eval, the
answer is the body of the first <answer>…</answer> block, and every parser works in time linear in
its input (MATH's sympy check runs in a worker process that is killed past its time limit). The
terms follow the paper's released reward functions:

    GSM8K, MATH   0.5·[<think> block] + 0.5·[<answer> block] + 3·[final answer correct]  ∈ [0, 4]
                  final answer: the answer block, or the whole text without one; inside it,
                  the first \\boxed{} if there is one. GSM8K: its last number, read as a reader
                  reads it, only when nothing is applied to it (2^3 is not 3; plumbing/arithmetic.py);
                  MATH: math-verify (math_answer), plain numbers compared exactly
    Countdown     with an "=" in the answer block (none: 0 format points):
                  −0.5·[more than one "="] + (1/3)·([last side is the target, digits only]
                  + [first side only numbers/operators] + [first side's numbers = the given
                  multiset]) + 3·[first side uses exactly the numbers and equals the target]  ∈ [−0.5, 4]
    Sudoku 4×4    0.25·[answer exactly 16 characters] + 0.25·[four of each 1–4] + 0.5·[keeps
                  the clues] (the last two only for 16 characters) + 3·(fraction of blank cells
                  right in the final answer's first 16 characters, zero-filled on the left)     ∈ [0, 4]
"""

import re

from plumbing import verifier
from plumbing.arithmetic import (
    DASHES,
    MAX_EXPR,
    eval_arithmetic,
    fractions_as_slash,
    join_digit_groups,
    last_number,
    normalize_operators,
    parse_number,
)

# ---------------------------------------------------------------------------------------------
# format


_ANSWER_OPEN, _ANSWER_CLOSE = re.compile("<answer>", re.I), re.compile("</answer>", re.I)
_THINK_OPEN, _THINK_CLOSE = re.compile("<think>", re.I), re.compile("</think>", re.I)
_BRACE = re.compile("[{}]")


def _block(text, open_tag, close_tag):
    """Body of the first complete open…close block, stripped, or None. The first opening tag with a
    closing tag after it is the first opening tag, so two linear searches suffice."""
    start = open_tag.search(text)
    end = close_tag.search(text, start.end()) if start else None
    return text[start.end() : end.start()].strip() if end else None


def extract_answer(text):
    """Body of the first complete <answer>…</answer> block (tags in any case), or None."""
    return _block(text, _ANSWER_OPEN, _ANSWER_CLOSE)


def has_think(text):
    return _block(text, _THINK_OPEN, _THINK_CLOSE) is not None


def first_boxed(text):
    """Content of the first \\boxed{…}, braces balanced, or None (also when it never closes)."""
    start = text.find("\\boxed{")
    if start < 0:
        return None
    depth, i = 1, start + len("\\boxed{")
    for brace in _BRACE.finditer(text, i):
        depth += 1 if brace.group() == "{" else -1
        if depth == 0:
            return text[i : brace.start()]
    return None


def final_answer(text):
    """What GSM8K, MATH and Sudoku grade: the answer block, or the whole text when there is none;
    within it, the first non-empty \\boxed{} if there is one."""
    a = extract_answer(text)
    a = text if a is None else a
    return first_boxed(a) or a


def format_score(text):
    return 0.5 * has_think(text) + 0.5 * (extract_answer(text) is not None)


# ---------------------------------------------------------------------------------------------
# GSM8K: the final answer's number, read as written (plumbing/arithmetic.py)


def gsm8k_correct(completion, answer):
    gold = parse_number(str(answer))
    return gold is not None and parse_number(final_answer(completion)) == gold


def gsm8k_reward(completion, answer):
    return format_score(completion) + 3.0 * gsm8k_correct(completion, answer)


# ---------------------------------------------------------------------------------------------
# MATH: math-verify (in its worker process: plumbing/verifier.py), plain numbers compared exactly


_DIGIT = re.compile(r"\d")
_PLAIN_NUMBER = re.compile(r"-?\s*(?:\d+(?:\.\d+)?|\.\d+)(?:/\d+)?")
_VARIABLE = re.compile(r"(?<![\\a-zA-Z])[a-zA-Z](?![a-zA-Z])")  # x, n: a single letter that is no LaTeX command


def plain_number(text):
    """A Fraction when text is nothing but one number (0.333333, -3/4, \\frac{1}{3}, $5$, 1\\,000), else None."""
    s = text.replace("$", "").replace("\\boxed", "").replace("\\!", "").replace("\\,", "\u2009")
    s = fractions_as_slash(join_digit_groups(s))
    s = s.replace("{", " ").replace("}", " ").translate(DASHES).strip()  # linear: no regex over the padding
    return last_number(s) if _PLAIN_NUMBER.fullmatch(s) else None


_DELIMITERS = (("\\[", "\\]"), ("\\(", "\\)"), ("$$", "$$"), ("$", "$"))


def math_answer(text):
    """The final answer as math-verify is to read it: one pair of math delimiters around the whole of it
    (\\[ \\frac{1}{2} \\] or $5$) and a closing period (\\boxed{7.}) read through. None for numbers around
    dollar signs that enclose nothing (8$ $7): those are no math delimiters, and 8 7 is no single answer."""
    s = final_answer(text).strip()
    for left, right in _DELIMITERS:
        inner = s[len(left) : -len(right)] if len(s) >= len(left) + len(right) else ""
        if s.startswith(left) and s.endswith(right) and left not in inner and right not in inner:
            s = inner.strip()
            break
    s = s.rstrip(" .")
    parts = s.replace("\\$", "").split("$")
    stray = any(not part.strip() for part in parts[1::2]) and any(_DIGIT.search(part) for part in parts[::2])
    return None if stray else s


def math_correct(completion, answer, time_limit=0.5):
    """math-verify's equivalence, with two exceptions where it is too lenient: two plain numbers are
    compared exactly (0.333333 is not 1/3), and an equation is right only if every side without a
    variable is right too (x = 7 is 7, 8 = 7 is wrong). The whole answer is read (math_answer), within the
    time limit."""
    pred = math_answer(completion)
    if pred is None:
        return False
    sides = pred.split("=") if len(pred) <= 4 * MAX_EXPR else [pred]
    for side in sides[:-1] if len(sides) <= 4 else []:
        if not _VARIABLE.search(side) and not _math_side_equal(answer, side, time_limit):
            return False
    return _math_side_equal(answer, pred, time_limit)


def _math_side_equal(answer, pred, time_limit):
    gold, guess = plain_number(str(answer)), plain_number(pred)
    if gold is not None and guess is not None:
        return gold == guess
    delimited = any(left in pred.replace("\\$", "") for left, _ in _DELIMITERS)  # prose with math of its own
    return verifier.equal(f"${answer}$", pred if delimited else f"${pred}$", time_limit)


def math_reward(completion, answer):
    return format_score(completion) + 3.0 * math_correct(completion, answer)


# ---------------------------------------------------------------------------------------------
# Countdown: exact rational arithmetic with a parser of our own (plumbing/arithmetic.py)

_LHS_CHARS = re.compile(r"[\d\s+\-*/()]+")


def _whole_numbers(text):
    """The digit runs of text as ints, or None if one is longer than 12 digits (no real operand is,
    and it is never cut into smaller numbers that might match)."""
    runs = re.findall(r"\d+", text)
    return None if any(len(r) > 12 for r in runs) else sorted(int(r) for r in runs)


_EXPRESSION_TAIL = re.compile(r"[\d\s+\-*/()]*$")


def equation_body(lhs):
    """The expression of an equation's first side as written around it, read through what a reader reads
    through: a label or prose before it ("Answer:", "The equation is"), markdown and code fences, a \\boxed{}
    (around the expression or the whole equation), $ or \\( \\) wrappers, \\left( \\right) and square brackets
    used as parentheses. The format thirds still read the side as written, as the release does."""
    for mark in ("\\boxed{", "\\left", "\\right", "**", "`", "$", "\\(", "\\)", "\\[", "\\]"):
        lhs = lhs.replace(mark, " ")
    lhs = lhs.replace("[", "(").replace("]", ")").replace("{", "(").replace("}", ")").strip()
    while lhs.endswith(")") and lhs.count(")") > lhs.count("("):  # the brace closing a \boxed{ read through
        lhs = lhs[:-1].rstrip()
    return _EXPRESSION_TAIL.search(lhs).group().strip()


def countdown_terms(answer_text, nums, target):
    """(has '=', more than one '=', last side is the target, first side only numbers/operators, first
    side's numbers are exactly nums: the release's format terms; and whether the expression, read through
    what is written around it, uses exactly nums and makes the target: the +3)."""
    sides = normalize_operators(answer_text[: 4 * MAX_EXPR]).split("=")
    lhs, rhs = sides[0].strip(), sides[-1].strip()
    body = equation_body(lhs)
    rhs_ok = len(sides) > 1 and re.fullmatch(r"\d{1,12}", rhs) is not None and int(rhs) == target
    lhs_ok = bool(lhs) and _LHS_CHARS.fullmatch(lhs) is not None
    nums_ok = _whole_numbers(lhs) == sorted(int(n) for n in nums)
    right = _whole_numbers(body) == sorted(int(n) for n in nums) and eval_arithmetic(body) == target
    return len(sides) > 1, len(sides) > 2, rhs_ok, lhs_ok, nums_ok, right


def countdown_reference(answer):
    """(nums, target) of a Countdown item, or None when it is malformed (never raises)."""
    nums, target = (answer.get("nums"), answer.get("target")) if isinstance(answer, dict) else (None, None)
    ints = isinstance(nums, (list, tuple)) and all(isinstance(n, int) and not isinstance(n, bool) for n in nums)
    return (nums, target) if ints and isinstance(target, int) and not isinstance(target, bool) else None


def countdown_correct(completion, answer):
    """An answer "expression = …" whose expression uses exactly the given numbers and equals the
    target (what is claimed on the right is the format term's business, as in the release)."""
    a, ref = extract_answer(completion), countdown_reference(answer)
    if a is None or ref is None:
        return False
    has_eq, _, _, _, _, right = countdown_terms(a, *ref)
    return has_eq and right


def countdown_reward(completion, answer):
    a, ref = extract_answer(completion), countdown_reference(answer)
    if a is None or ref is None:
        return 0.0
    has_eq, many_eq, rhs_ok, lhs_ok, nums_ok, right = countdown_terms(a, *ref)
    if not has_eq:  # "expression = target" is the asked format: without "=" nothing is scored
        return 0.0
    return -0.5 * many_eq + (rhs_ok + lhs_ok + nums_ok) / 3 + 3.0 * right


# ---------------------------------------------------------------------------------------------
# Sudoku 4×4: answer = {"puzzle": 16 chars, 0 or . for blanks, "solution": 16 digits}


def sudoku_reference(answer):
    """(puzzle, solution) of a Sudoku item as 16-character strings, or None when malformed."""
    p, s = (answer.get("puzzle"), answer.get("solution")) if isinstance(answer, dict) else (None, None)
    return (p, s) if isinstance(p, str) and isinstance(s, str) and len(p) == len(s) == 16 else None


def sudoku_accuracy(completion, answer):
    """Fraction of the blank cells right (the paper's Sudoku accuracy), read from the first 16
    characters of the final answer, zero-filled on the left when shorter."""
    ref = sudoku_reference(answer)
    blanks = [i for i, c in enumerate(ref[0]) if c not in "1234"] if ref else []
    if not blanks:
        return 0.0
    grid = final_answer(completion)[:16].zfill(16)
    return sum(grid[i] == ref[1][i] for i in blanks) / len(blanks)


def sudoku_reward(completion, answer):
    a, ref = extract_answer(completion), sudoku_reference(answer)
    if ref is None:
        return 0.0
    fmt = 0.0
    if a is not None and len(a) == 16:
        counts_ok = "".join(sorted(a)) == "1111222233334444"
        clues_ok = all(a[i] == c for i, c in enumerate(ref[0]) if c in "1234")
        fmt = 0.25 + 0.25 * counts_ok + 0.5 * clues_ok
    return fmt + 3.0 * sudoku_accuracy(completion, answer)
