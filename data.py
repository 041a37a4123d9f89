"""Tasks: prompts, procedural generators and loaders, and the table `TASKS` that declares each task
once (its prompt, data sources, reward r(o) of the group-relative objective, reported accuracy and
the warm start's solution text). Adding a task is its functions here and in rewards.py plus one row.

An item is a dict with the fields its task needs: gsm8k/math {"question", "answer"}, countdown
{"nums", "target"} (generated items also carry "expr" and "steps", a solution), sudoku {"puzzle",
"solution"}. `build_prompt` turns an item into chat-template token ids.
"""

import csv
import itertools
import json
import os
import random
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import rewards
from prompts import COUNTDOWN_PROMPT, MATH_PROMPT, SUDOKU_PROMPT


class DataError(ValueError):
    """A malformed data file: the message names the file, the line or row, and the field."""


# ---------------------------------------------------------------------------------------------
# prompts


def word_problem(item, compact=False):
    return item["question"]


def countdown_question(item, compact=False):
    nums, target = item["nums"], item["target"]
    if compact:  # the embedded model's character tokenizer: keep prompts short
        return f"{' '.join(map(str, nums))} -> {target}"
    return f"Target: {target}\nNumbers: {list(nums)}"


def sudoku_question(item, compact=False):
    return item["puzzle"] if compact else f"Puzzle: {item['puzzle']}"


def chat_ids(tok, messages):
    """Token ids of a chat ending in the assistant's turn. Rendered to text, then tokenized: what
    apply_chat_template(tokenize=True) returns changed in transformers 5 (a dict, not a list)."""
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tok(text, add_special_tokens=False).input_ids  # the template already holds the specials


def build_prompt(tok, task_name, item, system_prompt="", compact=False):
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": task(task_name).question(item, compact)})
    return chat_ids(tok, messages)


def system_prompt_text(task_name, system_prompt="", system_prompt_file=""):
    """The system turn a run uses: the text of `system_prompt_file` when given (any exact text),
    else the task's own prompt for "task", none for "", else `system_prompt` itself."""
    if system_prompt_file:
        try:
            with open(system_prompt_file, encoding="utf-8") as f:
                return f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"system_prompt_file={system_prompt_file}: {getattr(e, 'strerror', None) or e}") from None
    return task(task_name).system_prompt if system_prompt == "task" else system_prompt


# ---------------------------------------------------------------------------------------------
# Countdown: 3 numbers, + - * /, each number once


def _combine(a, b):
    """Every (value, text) reachable from two (value, text) operands."""
    (va, ta), (vb, tb) = a, b
    yield va + vb, f"{ta}+{tb}"
    yield va * vb, f"{_wrap(ta)}*{_wrap(tb)}"
    yield va - vb, f"{ta}-{_wrap(tb)}"
    yield vb - va, f"{tb}-{_wrap(ta)}"
    if vb != 0:
        yield va / vb, f"{_wrap(ta)}/{_wrap(tb, True)}"
    if va != 0:
        yield vb / va, f"{_wrap(tb)}/{_wrap(ta, True)}"


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


def split_of(key):
    """'test' for a fixed tenth of all problems, 'train' otherwise: a stable hash of the problem
    itself, so generated train and test sets never share a problem, whatever their sizes."""
    return "test" if zlib.crc32(repr(key).encode()) % 10 == 0 else "train"


def _enough(attempts, n, found, what):
    """Stop a generator whose settings cannot deliver n problems: `attempts` counts the tries since
    the last new problem, so a space that is used up (or empty) fails within seconds, not hours,
    while a rare last problem is still found."""
    if attempts > 100_000:
        raise ValueError(f"only {found} distinct {what} problems found with these generator settings; ask for fewer or widen the ranges")


def countdown_items(n, seed=0, num_range=(1, 20), target_range=(1, 100), split=None, unique=False, ops="+-*/"):
    """n solvable items; each carries "expr", one solution, and "steps", the two operations.
    split: None (any), or only problems of split_of's 'train' / 'test' part; unique: no problem
    twice; ops: the operations the generated solutions use (any may be used to answer)."""
    rng = random.Random(seed)
    items, seen, attempts = [], set(), 0
    while len(items) < n:
        attempts += 1
        _enough(attempts, n, len(items), "Countdown")
        nums = [rng.randint(*num_range) for _ in range(3)]
        i, j = rng.sample(range(3), 2)
        k = 3 - i - j
        pair = list(_combine((Fraction(nums[i]), str(nums[i])), (Fraction(nums[j]), str(nums[j]))))
        first_value, first_text = rng.choice([c for c, o in zip(pair, "+*--//") if o in ops])
        if first_value.denominator != 1 or first_value <= 0:  # whole, positive intermediate results
            continue
        third = (Fraction(nums[k]), str(nums[k]))
        op = rng.choice([i for i, o in enumerate("+*--//") if o in ops])  # same operation on expression and value
        value, expr = list(_combine((first_value, first_text), third))[op]
        _, step_text = list(_combine((first_value, str(first_value)), third))[op]
        if value.denominator != 1 or not target_range[0] <= value <= target_range[1]:
            continue
        key = (sorted(nums), int(value))
        if (split and split_of(key) != split) or (unique and repr(key) in seen):
            continue
        seen.add(repr(key))
        steps = [f"{first_text}={first_value}", f"{step_text}={value}"]
        items.append({"nums": nums, "target": int(value), "expr": expr, "steps": steps})
        attempts = 0
    return items


def countdown_solution_text(item, think=False):
    """A supervised completion for the warm start: the two operations, then the equation; None for
    an item without a known solution."""
    if "expr" not in item:
        return None
    think_block = f"<think>{item['steps'][0]}, {item['steps'][1]}</think>" if think and "steps" in item else ""
    return think_block + f"<answer>{item['expr']}={item['target']}</answer>"  # the asked "expression = target"


# ---------------------------------------------------------------------------------------------
# Sudoku 4×4, unique solution

_BASE = [[1, 2, 3, 4], [3, 4, 1, 2], [2, 1, 4, 3], [4, 3, 2, 1]]


def sudoku_count_solutions(grid, limit=2):
    """Number of completions of a 16-cell grid (0 = blank), counting up to `limit`."""
    g = list(grid)
    try:
        i = g.index(0)
    except ValueError:
        return 1
    r, c = divmod(i, 4)
    box = [(r // 2 * 2 + dr) * 4 + c // 2 * 2 + dc for dr in (0, 1) for dc in (0, 1)]
    used = {g[r * 4 + x] for x in range(4)} | {g[x * 4 + c] for x in range(4)} | {g[b] for b in box}
    total = 0
    for d in range(1, 5):
        if d not in used:
            g[i] = d
            total += sudoku_count_solutions(g, limit - total)
            if total >= limit:
                break
    return total


def sudoku_items(n, seed=0, sudoku_blanks=8, split=None, unique=False):
    """n puzzles with exactly one solution and `blanks` empty cells ("0"); split, unique as
    countdown_items."""
    blanks = sudoku_blanks
    if not 0 <= blanks <= 12:  # a 4x4 Sudoku needs at least 4 clues for a unique solution
        raise ValueError(f"blanks={blanks} must be in 0..12 for a uniquely solvable 4x4 Sudoku")
    rng = random.Random(seed)
    items, seen, attempts = [], set(), 0
    while len(items) < n:
        attempts += 1
        _enough(attempts, n, len(items), "Sudoku")
        digits = rng.sample(range(1, 5), 4)
        rows = [b * 2 + r for b in rng.sample([0, 1], 2) for r in rng.sample([0, 1], 2)]
        cols = [s * 2 + c for s in rng.sample([0, 1], 2) for c in rng.sample([0, 1], 2)]
        sol = [digits[_BASE[r][c] - 1] for r in rows for c in cols]
        if rng.random() < 0.5:  # transpose
            sol = [sol[c * 4 + r] for r in range(4) for c in range(4)]
        puzzle = list(sol)
        for i in rng.sample(range(16), 16):
            if sum(x == 0 for x in puzzle) == blanks:
                break
            puzzle[i], keep = 0, puzzle[i]
            if sudoku_count_solutions(puzzle) != 1:
                puzzle[i] = keep
        key = "".join(map(str, puzzle))
        if sum(x == 0 for x in puzzle) == blanks and (not split or split_of(key) == split) and not (unique and key in seen):
            seen.add(key)
            items.append({"puzzle": "".join(map(str, puzzle)), "solution": "".join(map(str, sol))})
            attempts = 0
    return items


def sudoku_solution_text(item):
    return f"<answer>{item['solution']}</answer>"


# ---------------------------------------------------------------------------------------------
# loaders: local files, with errors that name the file, the line or row, and the field


def _check(cond, where, msg):
    if not cond:
        raise DataError(f"{where}: {msg}")


def read_rows(path):
    """(location, row dict) from a JSONL, CSV or Parquet file; a line that is not a JSON object
    comes as (location, DataError) so that the caller decides whether to skip it."""
    if not os.path.exists(path):
        raise DataError(f"data file {path} does not exist")
    if not os.path.isfile(path):
        raise DataError(f"{path}: not a file")
    if path.endswith(".jsonl") or path.endswith(".json"):
        with open(path, "rb") as f:
            for n, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(f"{path}:{n}: not UTF-8 text ({e.reason} at byte {e.start} of the line)") from None
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    row = DataError(f"{path}:{n}: invalid JSON ({e.msg})")
                if not isinstance(row, (dict, DataError)):
                    row = DataError(f"{path}:{n}: a line must be a JSON object")
                yield f"{path}:{n}", row
    elif path.endswith(".csv"):
        try:
            with open(path, encoding="utf-8", newline="") as f:
                rows = list(csv.DictReader(f))
        except (UnicodeDecodeError, csv.Error) as e:
            raise DataError(f"{path}: not a UTF-8 CSV file ({e})") from None
        for n, row in enumerate(rows, 2):  # line 1 is the header
            yield f"{path}:{n}", row
    elif path.endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as e:  # pyarrow raises ArrowInvalid, OSError and more on a damaged file
            raise DataError(f"{path}: not a readable Parquet file ({type(e).__name__}: {str(e)[:80]})") from None
        for n, row in enumerate(rows):
            yield f"{path} row {n}", row
    else:
        raise DataError(f"{path}: unknown file type (expected .jsonl, .csv or .parquet)")


def _gsm8k_row(where, row):
    for field in ("question", "answer"):
        _check(isinstance(row.get(field), str) and row[field].strip(), where, f"field '{field}' missing or empty")
    # the hub's answers end in "#### 72"; a bare number is accepted too
    final = row["answer"].split("####")[-1].strip()
    _check(rewards.parse_number(final) is not None, where, f"field 'answer' has no final number: {final[:40]!r}")
    return {"question": row["question"], "answer": final.replace(",", "")}


def _math_row(where, row):
    q = row.get("problem", row.get("question"))
    _check(isinstance(q, str) and q.strip(), where, "field 'problem' missing or empty")
    ans = row.get("answer")
    if ans is None and isinstance(row.get("solution"), str):
        m = re.findall(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}", row["solution"])
        ans = m[-1] if m else None
    _check(isinstance(ans, str) and ans.strip(), where, "field 'answer' missing (and no \\boxed{} in 'solution')")
    return {"question": q, "answer": ans.strip(), "level": row.get("level")}


def _countdown_row(where, row):
    nums, target = row.get("nums"), row.get("target")
    if isinstance(nums, str):  # CSV: "25 3 2" or "[25, 3, 2]"
        nums = [int(x) for x in re.findall(r"-?\d+", nums)]
    ints = isinstance(nums, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in nums)
    _check(ints and len(nums) == 3, where, f"field 'nums' must be 3 integers, got {str(nums)[:40]}")
    if isinstance(target, str) and re.fullmatch(r"\s*-?\d+\s*", target):  # CSV
        target = int(target)
    _check(isinstance(target, int) and not isinstance(target, bool), where, f"field 'target' must be an integer, got {target!r}")
    solutions = countdown_solutions(nums, target)  # one of them is the warm start's supervised answer
    return {"nums": nums, "target": target, **({"expr": solutions[0]} if solutions else {})}


def _sudoku_row(where, row):
    p, s = str(row.get("puzzle", "")).replace(".", "0"), str(row.get("solution", ""))
    _check(re.fullmatch(r"[0-4]{16}", p) is not None, where, "field 'puzzle' must be 16 digits 0-4 (0 or . for blanks)")
    _check(re.fullmatch(r"[1-4]{16}", s) is not None, where, "field 'solution' must be 16 digits 1-4")
    _check(all(a in "0" or a == b for a, b in zip(p, s)), where, "field 'solution' contradicts a clue of 'puzzle'")
    return {"puzzle": p, "solution": s}


def load_file(task_name, path, skip_bad=False, limit=None):
    """Items of a task from a local file. A malformed row raises DataError naming it, unless
    skip_bad, which skips it and prints how many were skipped."""
    parse = task(task_name).parse_row
    items, skipped = [], 0
    for where, row in read_rows(path):
        try:
            if isinstance(row, DataError):
                raise row
            items.append(parse(where, row))
        except DataError:
            if not skip_bad:
                raise
            skipped += 1
        if limit and len(items) >= limit:
            break
    if skipped:
        print(f"{path}: skipped {skipped} malformed rows (skip_bad=True)")
    if not items:
        raise DataError(f"{path}: no {task_name} items in the file")
    return items


def gsm8k_hub(split):
    from datasets import load_dataset

    rows = load_dataset("openai/gsm8k", "main", split=split)
    return [_gsm8k_row(f"openai/gsm8k[{split}] row {i}", r) for i, r in enumerate(rows)]


def math_hub(split):
    """test: MATH-500; train: MATH train, levels 1-4, minus the MATH-500 problems."""
    from datasets import load_dataset

    held_out = [_math_row(f"HuggingFaceH4/MATH-500 row {i}", r) for i, r in enumerate(load_dataset("HuggingFaceH4/MATH-500", split="test"))]
    if split == "test":
        return held_out
    rows = load_dataset("DigitalLearningGmbH/MATH-lighteval", split="train")
    items = [_math_row(f"MATH train row {i}", r) for i, r in enumerate(rows)]
    seen = {it["question"] for it in held_out}
    return [it for it in items if it["question"] not in seen and str(it["level"]).strip()[-1:] in "1234"]


# ---------------------------------------------------------------------------------------------
# the tasks, one row each


@dataclass(frozen=True)
class Task:
    question: Callable  # (item, compact) -> the user turn's text
    parse_row: Callable  # (where, row dict of a local file) -> item, or DataError
    reward: Callable  # (completion, answer) -> float: r_i of the group-relative advantage
    accuracy: Callable  # (completion, answer) -> float in [0, 1], the reported accuracy
    answer: Callable  # item -> what reward and accuracy compare against
    reward_range: tuple  # (lowest, highest) reward on any completion
    hub: Callable | None = None  # split -> items, through `datasets` (needs network)
    generate: Callable | None = None  # (n, seed, split, unique, **knobs) -> items with solutions
    solution: Callable | None = None  # item -> the warm start's supervised completion text
    knobs: tuple = ()  # config keys the generator takes (difficulty)
    system_prompt: str = ""  # the task's own system turn (system_prompt = "task")


def _answer_field(item):
    return item["answer"]


def _whole_item(item):
    return item


TASKS = {
    "gsm8k": Task(word_problem, _gsm8k_row, rewards.gsm8k_reward, rewards.gsm8k_correct, _answer_field, (0.0, 4.0), hub=gsm8k_hub,
                  system_prompt=MATH_PROMPT),
    "math": Task(word_problem, _math_row, rewards.math_reward, rewards.math_correct, _answer_field, (0.0, 4.0), hub=math_hub,
                 system_prompt=MATH_PROMPT),
    "countdown": Task(countdown_question, _countdown_row, rewards.countdown_reward, rewards.countdown_correct, _whole_item, (-0.5, 4.0),
                      generate=countdown_items, solution=countdown_solution_text, knobs=("num_range", "target_range"),
                      system_prompt=COUNTDOWN_PROMPT),
    "sudoku": Task(sudoku_question, _sudoku_row, rewards.sudoku_reward, rewards.sudoku_accuracy, _whole_item, (0.0, 4.0),
                   generate=sudoku_items, solution=sudoku_solution_text, knobs=("sudoku_blanks",), system_prompt=SUDOKU_PROMPT),
}  # fmt: skip


def task(name):
    if name not in TASKS:
        raise ValueError(f"task={name!r} does not exist; choose one of {sorted(TASKS)}")
    return TASKS[name]


def check_generator_knobs(cfg):
    """Raise ValueError naming the first generator knob of cfg's task outside its range."""
    t = task(cfg["task"])
    for key in t.knobs:
        v = cfg[key]
        if key.endswith("_range") and not (len(v) == 2 and all(isinstance(x, int) and x >= 0 for x in v) and v[0] <= v[1]):
            raise ValueError(f"--{key}={v!r} must be (low, high) with 0 <= low <= high")
        if key == "sudoku_blanks" and not (isinstance(v, int) and 0 <= v <= 12):
            raise ValueError(f"--sudoku_blanks={v!r} must be in 0..12 for a uniquely solvable 4x4 Sudoku")


def generator_knobs(task_name, cfg):
    """The difficulty knobs of a generated task, taken from a script's config dict."""
    return {k: cfg[k] for k in task(task_name).knobs}


def test_set(task_name, path, n, seed, **gen):
    """The held-out items of a run with this seed: train.py and eval.py evaluate on the same ones.
    A local file is read (and checked) whole, then cut to n."""
    return load_items(task_name, "test", path or None, n=None if path else n, seed=seed + 1, **gen)[:n]


def load_items(task_name, split="train", path=None, n=None, seed=0, skip_bad=False, **gen):
    """One entry point for train/eval: a local file if given, else generated items (`gen` holds the
    difficulty knobs; a test set is distinct problems, training samples with replacement) or the hub."""
    t = task(task_name)
    if path:
        return load_file(task_name, path, skip_bad, limit=n)
    if t.generate:
        return t.generate(n or 256, seed=seed, split=split, unique=split == "test", **gen)
    if t.hub is None:
        raise ValueError(f"task={task_name!r} has no generator and no hub source; pass a local file")
    items = t.hub(split)
    return items[:n] if n else items
