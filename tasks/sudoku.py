"""4x4 Sudoku with a unique solution: fill the blanks so that every row, column and 2x2 box holds
1-4 once. Generated here (all 288 grids are known), or a local file such as SPG's CSV files.

An item is {"puzzle": 16 digits with 0 for a blank, "solution": 16 digits}.
"""

import random
import re

import rewards
from plumbing.data import check, enough, split_of

SYSTEM_PROMPT = """You are given a 4x4 Sudoku as a string of 16 digits, row by row from the top left, \
with 0 for an empty cell.
Fill every empty cell with a digit from 1 to 4 so that each row, each column and each of the four 2x2 boxes holds 1, \
2, 3 and 4 once.
Work through the cells inside <think> </think> tags.
Then write the solved grid inside <answer> </answer> tags as 16 digits with nothing else:
<think>
your reasoning
</think>
<answer>
the 16 digits of the solved grid
</answer>

Two worked examples.

Puzzle: 1204400100102000
<think>
Rows: 1204 / 4001 / 0010 / 2000
Row 1, column 3: its row, column and box already hold 124, so 3.
Row 2, column 2: its row, column and box already hold 124, so 3.
Row 2, column 3: its row, column and box already hold 134, so 2.
Row 3, column 1: its row, column and box already hold 124, so 3.
Row 3, column 2: its row, column and box already hold 123, so 4.
Row 3, column 4: its row, column and box already hold 134, so 2.
Row 4, column 2: its row, column and box already hold 234, so 1.
Row 4, column 3: its row, column and box already hold 123, so 4.
Row 4, column 4: its row, column and box already hold 124, so 3.
Grid: 1234 / 4321 / 3412 / 2143
</think>
<answer>
1234432134122143
</answer>

Puzzle: 1430020401000040
<think>
Rows: 1430 / 0204 / 0100 / 0040
Row 1, column 4: its row, column and box already hold 134, so 2.
Row 2, column 1: its row, column and box already hold 124, so 3.
Row 2, column 3: its row, column and box already hold 234, so 1.
Row 3, column 3: its row, column and box already hold 134, so 2.
Row 3, column 1: its row, column and box already hold 123, so 4.
Row 3, column 4: its row, column and box already hold 124, so 3.
Row 4, column 1: its row, column and box already hold 134, so 2.
Row 4, column 2: its row, column and box already hold 124, so 3.
Row 4, column 4: its row, column and box already hold 234, so 1.
Grid: 1432 / 3214 / 4123 / 2341
</think>
<answer>
1432321441232341
</answer>
"""

# --- config
sudoku_blanks = (6, 6)  # Sudoku generator: (fewest, most) blank cells per puzzle
sudoku_test_blanks = ()  # test/validation puzzles: ((blanks, weight), ...) in these proportions; () = sudoku_blanks
# --- end of config

reward, accuracy = rewards.sudoku_reward, rewards.sudoku_accuracy
REWARD_RANGE = (0.0, 4.0)  # r(o) of any completion and reference (rewards.py)
EXAMPLE_ROW = {"puzzle": "1030300001004001", "solution": "1234341221434321"}  # a row of a local data file (parse_row)


def question(item, compact=False):
    return item["puzzle"] if compact else f"Puzzle: {item['puzzle']}"


def answer(item):
    return item


def problem_key(item):
    return item["solution"]  # a test grid must never be the answer to a training puzzle


def check_options(sudoku_blanks, sudoku_test_blanks):
    v = sudoku_blanks
    ints = (
        isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(x, int) and not isinstance(x, bool) for x in v)
    )
    if not (ints and 0 <= v[0] <= v[1] <= 12):
        raise ValueError(
            f"--sudoku_blanks={v!r} must be (low, high) with 0 <= low <= high <= 12: a unique 4x4 solution needs 4 "
            "clues"
        )
    v = sudoku_test_blanks
    pair = lambda p: isinstance(p, (tuple, list)) and len(p) == 2 and all(isinstance(x, int) for x in p)  # noqa: E731
    if not (
        isinstance(v, (tuple, list))
        and all(pair(p) and 0 <= p[0] <= 12 and p[1] >= 0 for p in v)
        and (not v or sum(p[1] for p in v))
    ):
        raise ValueError(
            f"--sudoku_test_blanks={v!r} must be ((blanks, weight), ...) with blanks in 0..12 and weights >= 0"
        )


def parse_row(where, row):
    row = {k.lower(): v for k, v in row.items()}  # SPG's CSV files: Puzzle, Solution
    p, s = str(row.get("puzzle", "")).replace(".", "0"), str(row.get("solution", ""))
    p = (
        p.zfill(16) if re.fullmatch(r"\d{12,15}", p) else p
    )  # a CSV reader that took the puzzle for a number lost its leading 0s
    check(re.fullmatch(r"[0-4]{16}", p) is not None, where, "field 'puzzle' must be 16 digits 0-4 (0 or . for blanks)")
    check(re.fullmatch(r"[1-4]{16}", s) is not None, where, "field 'solution' must be 16 digits 1-4")
    check(all(a in "0" or a == b for a, b in zip(p, s)), where, "field 'solution' contradicts a clue of 'puzzle'")
    return {"puzzle": p, "solution": s}


# ---------------------------------------------------------------------------------------------
# the solver and the generator


# the cells that share a row, column or 2x2 box with cell i (the cell itself left out)
PEERS = [
    tuple(
        j
        for j in range(16)
        if j != i and (j // 4 == i // 4 or j % 4 == i % 4 or (j // 8, j % 4 // 2) == (i // 8, i % 4 // 2))
    )
    for i in range(16)
]


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


def count_solutions(grid, limit=2):
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


def generate(n, seed=0, split=None, unique=False, sudoku_blanks=sudoku_blanks, sudoku_test_blanks=sudoku_test_blanks):
    """n puzzles with exactly one solution and between sudoku_blanks[0] and [1] empty cells ("0").
    The split goes by the *solution grid*, so no test grid is ever a training puzzle's answer (of the
    288 grids, 226 train, 21 validation, 41 test); unique: no puzzle twice. sudoku_test_blanks
    ((blanks, weight), ...): the test and validation puzzles' blank counts in these proportions. The
    options default to the config block's."""
    lo, hi = sudoku_blanks
    if not 0 <= lo <= hi <= 12:  # a 4x4 Sudoku needs at least 4 clues for a unique solution
        raise ValueError(
            f"sudoku_blanks={sudoku_blanks} must be (low, high) with 0 <= low <= high <= 12: a unique solution needs "
            "4 clues"
        )
    rng = random.Random(seed)
    targets = (
        blank_counts(n, sudoku_test_blanks, rng) if sudoku_test_blanks and split in ("test", "validation") else None
    )
    items, seen, attempts = [], set(), 0
    while len(items) < n:
        attempts += 1
        enough(attempts, n, len(items), "Sudoku")
        sol = random_grid(rng)
        solution = "".join(map(str, sol))
        if split and split_of(solution) != split:
            continue
        blanks, puzzle = (rng.randint(lo, hi) if targets is None else targets[len(items)]), list(sol)
        for i in rng.sample(range(16), 16):
            if sum(x == 0 for x in puzzle) == blanks:
                break
            puzzle[i], keep = 0, puzzle[i]
            if count_solutions(puzzle) != 1:
                puzzle[i] = keep
        key = "".join(map(str, puzzle))
        if sum(x == 0 for x in puzzle) == blanks and not (unique and key in seen):
            seen.add(key)
            items.append({"puzzle": key, "solution": solution})
            attempts = 0
    return items


def solution(item):
    return f"<answer>{item['solution']}</answer>"
