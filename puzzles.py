"""Procedurally generated tasks: Countdown (3 numbers, + - * /, each number once) and 4x4 Sudoku
with a unique solution, with their solvers. The embedded default trains and evaluates on these; the
split of every problem into train, validation or test is a hash of the problem itself (split_of),
so no two share one, whatever their sizes.
"""

import itertools
import random
import zlib
from fractions import Fraction

# ---------------------------------------------------------------------------------------------
# Countdown: 3 numbers, + - * /, each number once


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


def countdown_solutions(nums, target):
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


SPLITS = ("train", "validation", "test")


def split_of(key):
    """'test' for a fixed tenth of all problems, 'validation' for another tenth (for choosing
    hyperparameters without reading the test set), 'train' for the rest: a stable hash of the
    problem itself, so the generated sets never share a problem, whatever their sizes."""
    return {0: "test", 1: "validation"}.get(zlib.crc32(repr(key).encode()) % 10, "train")


def _enough(attempts, n, found, what):
    """Stop a generator whose settings cannot deliver n problems: `attempts` counts the tries since
    the last new problem, so a space that is used up (or empty) fails within seconds, not hours,
    while a rare last problem is still found."""
    if attempts > 100_000:
        raise ValueError(f"only {found} distinct {what} problems found with these generator settings; ask for fewer or widen the ranges")


def _whole(va, vb, op):
    """Operation `op` (an OPS index) on whole numbers when its result is whole, else None (a
    fraction, or x/0): the generator keeps whole results only, so it needs no Fractions."""
    if op < 4:
        return (va + vb, va * vb, va - vb, vb - va)[op]
    num, den = (va, vb) if op == 4 else (vb, va)
    return num // den if den and num % den == 0 else None


def countdown_items(n, seed=0, num_range=(1, 20), target_range=(1, 100), split=None, unique=False, ops="+-*/"):
    """n solvable items; each carries "expr", one solution, and "steps", the two operations.
    split: None (any), or only problems of one of split_of's parts (SPLITS); unique: no problem
    twice; ops: the operations the generated solutions use (any may be used to answer)."""
    rng = random.Random(seed)
    allowed = [i for i, o in enumerate(OPS) if o in ops]
    items, seen, attempts = [], set(), 0
    while len(items) < n:
        attempts += 1
        _enough(attempts, n, len(items), "Countdown")
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
        first_text = _text(str(nums[i]), str(nums[j]), first_op)
        expr, step_text = _text(first_text, str(nums[k]), last_op), _text(str(first_value), str(nums[k]), last_op)
        steps = [f"{first_text}={first_value}", f"{step_text}={value}"]
        items.append({"nums": nums, "target": value, "expr": expr, "steps": steps})
        attempts = 0
    return items


def countdown_solution_text(item, think=False):
    """A supervised completion for the base model's SFT (sft.py): the two operations, then the
    equation; None for an item without a known solution."""
    if "expr" not in item:
        return None
    think_block = f"<think>{item['steps'][0]}, {item['steps'][1]}</think>" if think and "steps" in item else ""
    return think_block + f"<answer>{item['expr']}={item['target']}</answer>"  # the asked "expression = target"


# ---------------------------------------------------------------------------------------------
# Sudoku 4×4, unique solution


# the cells that share a row, column or 2x2 box with cell i (the cell itself left out)
PEERS = [tuple(j for j in range(16) if j != i and (j // 4 == i // 4 or j % 4 == i % 4 or (j // 8, j % 4 // 2) == (i // 8, i % 4 // 2)))
         for i in range(16)]  # fmt: skip


def seen_by(grid, i):
    """The digits already in cell i's row, column and 2x2 box."""
    return {grid[j] for j in PEERS[i]}


def random_grid(rng):
    """A complete 4x4 Sudoku grid, filled cell by cell in a random digit order with backtracking:
    every one of the 288 grids can come out."""
    grid = [0] * 16

    def fill(i):
        if i == 16:
            return True
        used = seen_by(grid, i)
        for d in rng.sample(range(1, 5), 4):
            if d not in used:
                grid[i] = d
                if fill(i + 1):
                    return True
        grid[i] = 0
        return False

    fill(0)
    return grid


def _every_grid():
    """The 288 complete 4x4 Sudoku grids, in lexicographic order."""
    grids, grid = [], [0] * 16

    def fill(i):
        if i == 16:
            return grids.append(tuple(grid))
        for d in sorted({1, 2, 3, 4} - seen_by(grid, i)):
            grid[i] = d
            fill(i + 1)
        grid[i] = 0

    fill(0)
    return grids


GRIDS = _every_grid()
# AGREE[i][d]: one bit per grid of GRIDS, set where that grid has digit d in cell i
AGREE = [[sum(1 << n for n, g in enumerate(GRIDS) if g[i] == d) for d in range(5)] for i in range(16)]


def sudoku_count_solutions(grid, limit=2):
    """Number of completions of a 16-cell grid (0 = blank), counting up to `limit`: the grids
    that agree with every clue, an AND of one bit mask per clue."""
    agree = (1 << len(GRIDS)) - 1
    for i, d in enumerate(grid):
        if d:
            agree &= AGREE[i][d]
    return min(agree.bit_count(), limit)


def blank_counts(n, weights, rng):
    """n blank counts in the proportions of weights ((blanks, weight), ...), by largest remainder,
    shuffled: a test set of n puzzles with the blank distribution of a published one."""
    total = sum(w for _, w in weights)
    exact = [(b, n * w / total) for b, w in weights]
    counts = {b: int(x) for b, x in exact}
    for b, _ in sorted(exact, key=lambda bx: bx[1] - int(bx[1]), reverse=True)[: n - sum(counts.values())]:
        counts[b] += 1
    out = [b for b, c in counts.items() for _ in range(c)]
    rng.shuffle(out)
    return out


def sudoku_items(n, seed=0, sudoku_blanks=(8, 8), split=None, unique=False, sudoku_test_blanks=()):
    """n puzzles with exactly one solution and between sudoku_blanks[0] and [1] empty cells ("0").
    The split goes by the *solution grid*, so no test grid is ever a training puzzle's answer (of the
    288 grids, 226 train, 21 validation, 41 test); unique: no puzzle twice. sudoku_test_blanks
    ((blanks, weight), ...): the test and validation puzzles' blank counts in these proportions."""
    lo, hi = sudoku_blanks
    if not 0 <= lo <= hi <= 12:  # a 4x4 Sudoku needs at least 4 clues for a unique solution
        raise ValueError(f"sudoku_blanks={sudoku_blanks} must be (low, high) with 0 <= low <= high <= 12: a unique solution needs 4 clues")
    rng = random.Random(seed)
    targets = blank_counts(n, sudoku_test_blanks, rng) if sudoku_test_blanks and split in ("test", "validation") else None
    items, seen, attempts = [], set(), 0
    while len(items) < n:
        attempts += 1
        _enough(attempts, n, len(items), "Sudoku")
        sol = random_grid(rng)
        solution = "".join(map(str, sol))
        if split and split_of(solution) != split:
            continue
        blanks, puzzle = (rng.randint(lo, hi) if targets is None else targets[len(items)]), list(sol)
        for i in rng.sample(range(16), 16):
            if sum(x == 0 for x in puzzle) == blanks:
                break
            puzzle[i], keep = 0, puzzle[i]
            if sudoku_count_solutions(puzzle) != 1:
                puzzle[i] = keep
        key = "".join(map(str, puzzle))
        if sum(x == 0 for x in puzzle) == blanks and not (unique and key in seen):
            seen.add(key)
            items.append({"puzzle": key, "solution": solution})
            attempts = 0
    return items


def sudoku_solution_text(item):
    return f"<answer>{item['solution']}</answer>"
