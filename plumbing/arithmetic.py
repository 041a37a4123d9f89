"""Numbers and arithmetic as a completion writes them, for the rewards: the last number of a text read as written
(GSM8K's final answer; nothing applied to it, 2^3 is not 3), and + − × ÷ with parentheses evaluated exactly, as
Fractions, by a parser of our own (Countdown's equations, an unevaluated 2 * 9), never with eval. Every function
takes any string and works in time linear in its length."""

import re
from collections import deque
from fractions import Fraction

# numbers as written

_NUMBER = re.compile(r"(?:\d+(?:\.\d+)?|\.\d+)(?:/\d+)?(?:[eE][-+]?\d+)?")  # 72, 0.5, .5, 3/4, and 1e3 (to refuse it)
MAX_NUMBER = 40  # characters: a longer number never matches (it is not cut into pieces that might)
_FRAC = r"\\[dt]?frac\s*(?:\{\s*(\d{1,30})\s*\}|(\d))\s*(?:\{\s*(\d{1,30})\s*\}|(\d))"
_LATEX_FRAC = re.compile(
    r"\\[dt]?frac\s*(?:\{\s*(-?\d{1,30})\s*\}|(\d))\s*(?:\{\s*(\d{1,30})\s*\}|(\d))"
)  # \frac{3}{4}
_MIXED = re.compile(r"(?<![\d.])(\d{1,30})\s*" + _FRAC)  # 1\frac{1}{2}: one and a half
_LATEX_TEXT = re.compile(r"\\(?:text|mathrm|textbf|mathbf|mbox)\{([^{}]*)\}")
_MARKDOWN = re.compile(r"(?<!\d)\*\*|\*\*(?!\d)|(?<![\w*])\*(?=[^\s*])|(?<=[^\s*])\*(?![\w*])|`")  # **18**, *18*
DASHES = str.maketrans({"−": "-", "–": "-"})  # the minus sign and the en dash written for one
# what, right before or after a number, applies something to it (2^3, \sqrt{49}, 3 * 4, 10 - 5, 1e3)
_APPLIED_BEFORE = re.compile(r"(?:[\^_*/×÷·√]|\\[a-zA-Z]+|(?<=[\d)\]}])\s*[-+])\s*\{?\s*$")
_APPLIED_AFTER = re.compile(
    r"^\s*\}?\s*(?:[_√]|[*/×÷·(]\s*[\d.(\-]|\^\s*\{?\s*[\d.(\-a-zA-Z]|\\(?:times|cdot|div)|[-+]\s*[\d.(])"
)
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°")  # -5^\circ is -5 degrees, not a power
_UNIT_EXPONENT = re.compile(r"[a-zA-Z]\s*\^\s*\{?\s*$")  # the 2 of m^2 belongs to the unit
_NEUTRAL_COMMANDS = re.compile(
    r"\\(?:approx|quad|qquad|le|leq|ge|geq|sim|equiv|to|rightarrow|Rightarrow|implies|left|right)\s*\{?\s*$"
)
_ARITHMETIC = re.compile(r"[\d\s.+\-*/()×÷·]+|.*\\(?:times|cdot|div).*")


def fractions_as_slash(s):
    """\\frac{3}{4} and \\frac34 (also \\dfrac, \\tfrac) written as 3/4; a mixed number 1\\frac{1}{2} as 3/2."""
    s = _MIXED.sub(lambda m: f"{int(m[1]) * int(m[4] or m[5]) + int(m[2] or m[3])}/{m[4] or m[5]}", s)
    return _LATEX_FRAC.sub(lambda m: f"{m.group(1) or m.group(2)}/{m.group(3) or m.group(4)}", s)


def plain_text(s):
    """The answer as a reader sees it: markdown emphasis and code marks, $, \\boxed, \\text{}, \\%, thin
    spaces, {,} and thousands separators, \\frac and mixed numbers, Unicode minus signs and degree marks
    read through."""
    for mark in ("\\boxed", "\\$", "$", "\\%", "\\!", "\\,", "\\left", "\\right"):
        s = s.replace(mark, "")
    s = _LATEX_TEXT.sub(r" \1 ", _MARKDOWN.sub("", s)).replace("{,}", ",")
    s = _DEGREES.sub(" degrees", fractions_as_slash(s)).translate(DASHES)
    return re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s)  # thousands separators


def last_number(s):
    """The last number of plain text s as a Fraction, read as written, or None when something is applied
    to it (2^3, 1e3, \\sqrt{49}, 3 * 4, 10 - 5); an exponent of a unit (m^2) is passed over."""
    for found in reversed(deque(_NUMBER.finditer(s), maxlen=2)):
        before, after = s[max(0, found.start() - 64) : found.start()], s[found.end() : found.end() + 64]
        if _UNIT_EXPONENT.search(before):
            continue
        if len(found.group()) > MAX_NUMBER or "e" in found.group().lower():
            return None
        sign = re.search(r"-\s*$", before)
        if sign and not re.search(r"[\d)\]}]\s*$", before[: sign.start()]):  # a sign, not a subtraction
            before = before[: sign.start()]
        else:
            sign = None
        if (_APPLIED_BEFORE.search(before) and not _NEUTRAL_COMMANDS.search(before)) or _APPLIED_AFTER.match(after):
            return None
        try:
            value = Fraction(found.group())
        except (ValueError, ZeroDivisionError):
            return None
        return -value if sign else value
    return None


def parse_number(s):
    """The final answer of s as a Fraction, or None. Of the sides of its equals signs (a result followed
    by its derivation, "18 = 2 \\times 9", or after it, "2 \\times 9 = 18"), the last that ends in a number
    read as written (plain_text, last_number); else the last that is plain arithmetic of the four
    operations, evaluated exactly (an unevaluated 2 * 9). Powers, roots and exponents are not evaluated."""
    sides = plain_text(s).split("=")[-8:]
    for side in reversed(sides):
        if (value := last_number(side)) is not None:
            return value
    for side in reversed(sides):
        side = side.strip().rstrip(".")
        if side and _ARITHMETIC.fullmatch(side) and not re.search(r"\d\s*\.\s*\d", side):
            if (value := eval_arithmetic(side)) is not None:
                return value
    return None


# arithmetic of whole numbers, without eval

_TOKEN = re.compile(r"\s*(\d{1,12}|[-+*/()])")  # whole numbers only: "3.5" would invent a number from 3 and 5
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
