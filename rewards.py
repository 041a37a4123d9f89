"""Rewards r(o) of the four tasks; the group-relative advantages of agrpo.py are built on them.

Every function takes (completion, answer) and returns a float in a documented range for *any*
string: nothing here calls eval, answers come from the last <answer>…</answer> block, and every
parser works in time linear in its input (MATH's sympy check runs in a worker process that is
killed past its time limit).

    GSM8K, MATH   0.5·[<think> block] + 0.5·[<answer> block] + 3·[answer correct]        ∈ [0, 4]
    Countdown     −0.5·[more than one "="] + (1/3)·([right side = target] + [left side only
                  numbers/operators] + [numbers = the given multiset]) + 3·[correct]     ∈ [−0.5, 4]
    Sudoku 4×4    0.25·[16 digits] + 0.25·[four of each 1–4] + 0.5·[keeps the clues]
                  + 3·(fraction of blank cells right)                                     ∈ [0, 4]
"""

import multiprocessing as mp
import re
from fractions import Fraction

# ---------------------------------------------------------------------------------------------
# format


def extract_answer(text):
    """Content of the last complete <answer>…</answer> block, or None."""
    end = text.rfind("</answer>")
    start = text.rfind("<answer>", 0, end) if end >= 0 else -1
    return text[start + len("<answer>") : end].strip() if start >= 0 else None


def has_think(text):
    start = text.find("<think>")
    return start >= 0 and text.find("</think>", start) >= 0


def format_score(text):
    return 0.5 * has_think(text) + 0.5 * (extract_answer(text) is not None)


# ---------------------------------------------------------------------------------------------
# GSM8K: numeric match

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:/\d+)?")
MAX_NUMBER = 40  # characters: a longer number never matches (it is not cut into pieces that might)
_LATEX_FRAC = re.compile(r"\\[dt]?frac\{(-?\d{1,30})\}\{(\d{1,30})\}")
_LATEX_TEXT = re.compile(r"\\(?:text|mathrm|textbf|mbox)\{([^{}]*)\}")


def parse_number(s):
    """The last number in s as a Fraction: commas, $, %, units, LaTeX (\\boxed, \\frac, \\text)
    and trailing ".0" are handled; None when there is no number."""
    s = s.replace("\\boxed", "").replace("\\$", "").replace("$", "").replace("\\%", "").replace("\\!", "").replace("\\,", "")
    s = _LATEX_TEXT.sub(r" \1 ", s)
    s = _LATEX_FRAC.sub(r"\1/\2", s)
    s = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s)  # thousands separators
    s = s.replace("−", "-")
    found = _NUMBER.findall(s)
    if not found or len(found[-1]) > MAX_NUMBER:
        return None
    try:
        return Fraction(found[-1])
    except (ValueError, ZeroDivisionError):
        return None


def gsm8k_correct(completion, answer):
    pred = extract_answer(completion)
    gold = parse_number(str(answer))
    return pred is not None and gold is not None and parse_number(pred) == gold


def gsm8k_reward(completion, answer):
    return format_score(completion) + 3.0 * gsm8k_correct(completion, answer)


# ---------------------------------------------------------------------------------------------
# MATH: math-verify, in a worker process so a pathological answer (9^{9^{9}}) cannot hang us

_worker = None


def _math_worker(conn):
    import logging

    from math_verify import parse, verify

    logging.disable(logging.WARNING)  # it warns on every call that we do the timing ourselves
    # sympy and the LaTeX parser load lazily on first use: warm them up before the time limit applies
    verify(parse("\\boxed{2\\sin x\\cos x}", parsing_timeout=None), parse("\\boxed{\\sin 2x}", parsing_timeout=None), timeout_seconds=None)
    conn.send("ready")
    while True:
        gold, pred = conn.recv()
        try:
            ok = bool(verify(parse(gold, parsing_timeout=None), parse(pred, parsing_timeout=None), timeout_seconds=None))
        except Exception:
            ok = False
        conn.send(ok)


def _math_equal(gold, pred, time_limit):
    global _worker
    if _worker is None or not _worker[0].is_alive():
        # forkserver: a clean single-threaded parent with math_verify preloaded, so a respawn after a
        # kill takes milliseconds, and no torch threads or CUDA state are forked
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["math_verify"])
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_math_worker, args=(child,), daemon=True)
        proc.start()
        parent.recv()  # start-up is not charged to the call's time limit
        _worker = (proc, parent)
    proc, conn = _worker
    try:
        conn.send((gold, pred))
        if conn.poll(time_limit):
            return conn.recv()
    except (EOFError, OSError):  # the worker died mid-call (killed from outside): score False, respawn next call
        pass
    proc.kill()  # overran or died: a fresh worker starts on the next call
    proc.join()
    conn.close()
    _worker = None
    return False


def math_correct(completion, answer, time_limit=0.5):
    pred = extract_answer(completion)
    if pred is None or len(pred) > 1000:
        return False
    wrap = (lambda s: s) if "\\boxed" in pred else (lambda s: "\\boxed{" + s + "}")
    return _math_equal("\\boxed{" + str(answer) + "}", wrap(pred), time_limit)


def math_reward(completion, answer):
    return format_score(completion) + 3.0 * math_correct(completion, answer)


# ---------------------------------------------------------------------------------------------
# Countdown: exact rational arithmetic with a parser of our own

_TOKEN = re.compile(r"\s*(\d{1,12}|[-+*/()])")  # whole numbers only: "3.5" would invent a number from 3 and 5
_LHS_CHARS = re.compile(r"[\d\s+\-*/()]+")
_OPERATORS = {"−": "-", "–": "-", "×": "*", "·": "*", "÷": "/", "\\times": "*", "\\cdot": "*", "\\div": "/"}
MAX_EXPR = 200  # characters; a Countdown equation is a few dozen


def normalize_operators(expr):
    """The Unicode minus, ×, ÷, · and LaTeX's \\times, \\cdot, \\div as the ASCII operators."""
    for symbol, ascii_op in _OPERATORS.items():
        expr = expr.replace(symbol, ascii_op)
    return expr


def tokenize(expr):
    expr = normalize_operators(expr)
    tokens, pos = [], 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m:
            return None if expr[pos:].strip() else tokens
        tokens.append(m.group(1))
        pos = m.end()
    return tokens


def eval_arithmetic(expr):
    """Value of an arithmetic expression (whole numbers, + - * / and their Unicode forms, parentheses, unary minus) as a
    Fraction, or None if it is not one (syntax, division by zero, too long). Never uses eval;
    "**" is not an operator, so 9**9**9 is a syntax error, and length bounds the work."""
    if len(expr) > MAX_EXPR:
        return None
    tokens = tokenize(expr)
    if not tokens:
        return None
    pos = 0

    def peek():
        return tokens[pos] if pos < len(tokens) else None

    def take():
        nonlocal pos
        pos += 1
        return tokens[pos - 1]

    def expression():
        v = term()
        while v is not None and peek() in ("+", "-"):
            op, r = take(), term()
            v = None if r is None else (v + r if op == "+" else v - r)
        return v

    def term():
        v = factor()
        while v is not None and peek() in ("*", "/"):
            op, r = take(), factor()
            if r is None or (op == "/" and r == 0):
                return None
            v = v * r if op == "*" else v / r
        return v

    def factor():
        t = peek()
        if t is None:
            return None
        if t == "-":
            take()
            v = factor()
            return None if v is None else -v
        if t == "(":
            take()
            v = expression()
            return v if take_if(")") else None
        if t[0].isdigit():
            return Fraction(take())
        return None

    def take_if(t):
        if peek() == t:
            take()
            return True
        return False

    # recursion depth is bounded by MAX_EXPR (each level consumes a character)
    value = expression()
    return value if pos == len(tokens) else None


def countdown_terms(answer_text, nums, target):
    """(multiple '=', rhs ok, lhs only numbers/operators, numbers exact, value == target)."""
    lhs, eq, rhs = normalize_operators(answer_text[: 4 * MAX_EXPR]).partition("=")
    lhs = lhs.strip()
    # "expression = target" is optional: an answer without "=" has no right side to be wrong
    rhs_ok = not eq or eval_arithmetic(rhs.strip()) == target
    lhs_ok = bool(lhs) and _LHS_CHARS.fullmatch(lhs) is not None
    used = sorted(int(n) for n in re.findall(r"\d{1,12}", lhs)) if lhs_ok and len(lhs) <= MAX_EXPR else None
    nums_ok = used == sorted(int(n) for n in nums)
    value_ok = lhs_ok and eval_arithmetic(lhs) == target
    return answer_text.count("=") > 1, rhs_ok, lhs_ok, nums_ok, value_ok


def countdown_reference(answer):
    """(nums, target) of a Countdown item, or None when it is malformed (never raises)."""
    nums, target = (answer.get("nums"), answer.get("target")) if isinstance(answer, dict) else (None, None)
    ints = isinstance(nums, (list, tuple)) and all(isinstance(n, int) and not isinstance(n, bool) for n in nums)
    return (nums, target) if ints and isinstance(target, int) and not isinstance(target, bool) else None


def countdown_correct(completion, answer):
    """An equation over exactly the given numbers that evaluates to the target (and claims no
    other value on its right side)."""
    a, ref = extract_answer(completion), countdown_reference(answer)
    if a is None or ref is None:
        return False
    many_eq, rhs_ok, lhs_ok, nums_ok, value_ok = countdown_terms(a, *ref)
    return not many_eq and rhs_ok and nums_ok and value_ok


def countdown_reward(completion, answer):
    a, ref = extract_answer(completion), countdown_reference(answer)
    if a is None or ref is None:
        return 0.0
    many_eq, rhs_ok, lhs_ok, nums_ok, value_ok = countdown_terms(a, *ref)
    # the +3 is exactly `countdown_correct`: with the numbers required, the bare target earns nothing
    correct = not many_eq and rhs_ok and nums_ok and value_ok
    return -0.5 * many_eq + (rhs_ok + lhs_ok + nums_ok) / 3 + 3.0 * correct


# ---------------------------------------------------------------------------------------------
# Sudoku 4×4: answer = {"puzzle": 16 chars, 0 or . for blanks, "solution": 16 digits}


def sudoku_grid(completion):
    a = extract_answer(completion)
    if a is None:
        return None
    digits = re.findall(r"\d", a[:10_000])
    return digits if len(digits) == 16 else None


def sudoku_reference(answer):
    """(puzzle, solution) of a Sudoku item as 16-character strings, or None when malformed."""
    p, s = (answer.get("puzzle"), answer.get("solution")) if isinstance(answer, dict) else (None, None)
    return (p, s) if isinstance(p, str) and isinstance(s, str) and len(p) == len(s) == 16 else None


def sudoku_accuracy(completion, answer):
    """Fraction of the blank cells filled correctly (the paper's Sudoku accuracy)."""
    grid, ref = sudoku_grid(completion), sudoku_reference(answer)
    blanks = [i for i, c in enumerate(ref[0]) if c not in "1234"] if ref else []
    if grid is None or not blanks:
        return 0.0
    return sum(grid[i] == answer["solution"][i] for i in blanks) / len(blanks)


def sudoku_correct(completion, answer):
    return sudoku_accuracy(completion, answer) == 1.0


def sudoku_reward(completion, answer):
    grid = sudoku_grid(completion)
    if grid is None or sudoku_reference(answer) is None:
        return 0.0
    counts_ok = all(grid.count(d) == 4 for d in "1234")
    clues_ok = all(grid[i] == c for i, c in enumerate(answer["puzzle"]) if c in "1234")
    return 0.25 + 0.25 * counts_ok + 0.5 * clues_ok + 3.0 * sudoku_accuracy(completion, answer)
