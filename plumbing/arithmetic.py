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
# markdown emphasis and code marks (**18**, *18*, __18__, _18_, `18`); a * or _ that touches an operand on the
# side it would face is an operator or a subscript and stays: (10-8)*4, 5*-1, 2*(16-3-4), 9**2, x_1, a_{18}
_MARKDOWN = re.compile(  # each alternative opens with its mark, so the scan jumps from mark to mark
    r"\*\*(?<!\d\*\*)|\*\*(?!\d)"
    r"|\*(?<![\w*)\]}]\*)(?<![\d)\]}]\s\*)(?=[^\s*)\]}])|\*(?<=[^\s*(\[{]\*)(?![\w*(\[{.\-\\]|\s*\d)"
    r"|__(?<![\w\\]__)(?=[^\s_])|_(?<![\w\\]_)(?=[^\s_])|_(?<=[^\s_]_)_?(?![\w{_\\])|`"
)
# digits grouped by a separator, written without it: 1,200,000, 1 200 000 (also with no-break or thin spaces),
# 1'200'000, 12,00,000 (Indian), and 1.200.000 (two groups at least: 1.200 is a decimal)
_GROUPED = re.compile(
    r"\d(?<![\d.,'’]\d)(?:\d{0,2}(?P<sep>[,'’ \u00a0\u202f\u2009])\d{3}(?:(?P=sep)\d{3})*"
    r"|\d?(?:,\d{2})+,\d{3}|\d{0,2}(?:\.\d{3}){2,}(?!\.\d))(?!\d)"
)
_NON_DIGIT = re.compile(r"\D")
# a whole number and a proper fraction: 1 1/2 is one and a half (3 1/2 * 2 or 1 3/2 are left as written)
_MIXED_PLAIN = re.compile(r"(\d(?<![\d.,/]\d)\d{0,29})[ \u00a0]+(\d{1,30})/(\d{1,30})(?![\d.,/])")
_WORD_SIGN = re.compile(r"\b(?:minus|negative)\s+(?=\.?\d)", re.I)  # minus 5, negative 5; 10 minus 5 is 10 - 5
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
_ARITHMETIC = re.compile(r"[\d\s.+\-*/()]+")  # after normalize_operators
_GLUED = re.compile(r"\d[,.'’:]?$")  # 3:07, 1,0000, 1.5.3: the number is the tail of another, not one of its own
_PARENTHESIS = re.compile("[()]")
_BARE_NUMBER = re.compile(r"\s*-?\s*[\d.,/]+\s*")
_ASIDE_AFTER = re.compile(r"\d[a-zA-Z%\s]*\s$")  # a number, perhaps its unit, a space: 18 apples (


def fractions_as_slash(s):
    """\\frac{3}{4} and \\frac34 (also \\dfrac, \\tfrac) written as 3/4; a mixed number 1\\frac{1}{2} as 3/2."""
    if "frac" not in s:  # the mixed-number regex opens with digits: skip its scan where it cannot match
        return s
    s = _MIXED.sub(lambda m: f"{int(m[1]) * int(m[4] or m[5]) + int(m[2] or m[3])}/{m[4] or m[5]}", s)
    return _LATEX_FRAC.sub(lambda m: f"{m.group(1) or m.group(2)}/{m.group(3) or m.group(4)}", s)


def plain_text(s):
    """The answer as a reader sees it: markdown emphasis and code marks, $, \\boxed, \\text{}, \\%, thin
    spaces, {,} and digit-group separators (join_digit_groups), \\frac and mixed numbers (1\\frac{1}{2},
    1 1/2), Unicode minus signs, minus and negative as signs, and degree marks read through."""
    for mark in ("\\boxed", "\\$", "$", "\\%", "\\!", "\\left", "\\right"):
        s = s.replace(mark, "")
    s = _LATEX_TEXT.sub(r" \1 ", _MARKDOWN.sub("", s)).replace("{,}", ",").replace("\\,", "\u2009")
    s = _DEGREES.sub(" degrees", fractions_as_slash(s)).translate(DASHES)
    s = _MIXED_PLAIN.sub(_mixed_as_slash, join_digit_groups(s))
    lower = s.lower()  # the word regex is slow to scan: run it only where a sign word is
    return _WORD_SIGN.sub("-", s) if "minus" in lower or "negative" in lower else s


def join_digit_groups(s):
    """Grouped digits written without their separators (1,200,000 and the other forms of _GROUPED)."""
    return _GROUPED.sub(lambda m: _NON_DIGIT.sub("", m.group()), s)


def _mixed_as_slash(m):
    whole, num, den = int(m[1]), int(m[2]), int(m[3])
    return f"{whole * den + num}/{den}" if num < den else m.group()


def last_number(s):
    """The last number of plain text s as a Fraction, read as written, or None when something is applied
    to it (2^3, 1e3, \\sqrt{49}, 3 * 4, 10 - 5); an exponent of a unit (m^2) is passed over."""
    for found in reversed(_last_two_numbers(s)):
        before, after = s[max(0, found.start() - 64) : found.start()], s[found.end() : found.end() + 64]
        if _UNIT_EXPONENT.search(before):
            continue
        if len(found.group()) > MAX_NUMBER or "e" in found.group().lower() or _GLUED.search(before):
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


def _last_two_numbers(s, window=256):
    """The last two matches of _NUMBER in s, as a scan of the whole of s finds them, from a scan of its tail: the
    tail's first match may be the end of a longer one and is dropped (a match's suffix ends where it does)."""
    start = max(s.rfind(digit) for digit in "0123456789") - window
    if start > 0:
        tail = list(_NUMBER.finditer(s, start))[1:]
        if len(tail) >= 2:
            return tail[-2:]
    return list(deque(_NUMBER.finditer(s), maxlen=2))


def parse_number(s):
    """The final answer of s as a Fraction, or None. Of the sides of its equals signs (a result followed
    by its derivation, "18 = 2 \\times 9", or after it, "2 \\times 9 = 18"), the last that ends in a number
    read as written (plain_text, drop_aside, last_number); else the last that is plain arithmetic of the
    four operations, evaluated exactly (an unevaluated 2 * 9, (10-8)*4). Powers, roots and exponents are not
    evaluated. A number glued to another (3:07, 1,0000, 1.5.3) is none."""
    sides = plain_text(s).split("=")[-8:]
    for side in reversed(sides):
        if (value := last_number(drop_aside(side))) is not None:
            return value
    for side in reversed(sides):
        side = normalize_operators(side.strip().rstrip(".")) if len(side) <= 2 * MAX_EXPR else ""
        if side and _ARITHMETIC.fullmatch(side) and not re.search(r"\d\s*\.\s*\d", side):
            if (value := eval_arithmetic(side)) is not None:
                return value
    return None


def drop_aside(s):
    """s without the parenthetical that closes it after a number, a derivation or a remark: 18 (9 + 9), 18 apples
    (3 bags of 6) and 5 (mod 7) are 18, 18 and 5. A bare number in parentheses is kept (after 3 days (18), 18 is
    the answer), and so is a parenthesis that an operator applies to (2*(16-3-4))."""
    t = s.rstrip(" .!")
    if not t.endswith(")"):
        return s
    depth, start = 0, max(0, len(t) - MAX_EXPR)  # an aside is short: one longer is read as written
    for p in reversed([m.start() for m in _PARENTHESIS.finditer(t, start)]):
        depth += 1 if t[p] == ")" else -1
        if depth == 0:
            remark = not _BARE_NUMBER.fullmatch(t[p + 1 : -1])
            return t[:p] if remark and _ASIDE_AFTER.search(t[max(0, p - 64) : p]) else s
    return s


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
