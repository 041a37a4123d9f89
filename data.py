"""Tasks: questions, loaders (local files and the released run's hub data), and the table `TASKS`
that declares each task once (its prompts, data sources, generator (puzzles.py), reward r(o) of the
group-relative objective, reported accuracy and the solution text the base models' SFT reads).
Adding a task is its functions here and in rewards.py plus one row.

An item is a dict with the fields its task needs: gsm8k/math {"question", "answer"}, countdown
{"nums", "target"} (generated items also carry "expr" and "steps", a solution), sudoku {"puzzle",
"solution"}. `build_prompt` turns an item into chat-template token ids.
"""

import csv
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

import rewards
from configurator import first_line
from prompts import COUNTDOWN_PROMPT, MATH_PROMPT, SUDOKU_PROMPT
from puzzles import countdown_items, countdown_solution_text, countdown_solutions, sudoku_items, sudoku_solution_text


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


def build_prompt(tok, task_name, item, system_prompt="", compact=False, max_length=0):
    """The prompt's token ids; longer than max_length (> 0) they are cut from the left, as TRL's
    max_prompt_length does (the system turn goes first, the question's end and the assistant turn stay)."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": task(task_name).question(item, compact)})
    return cut_left(chat_ids(tok, messages), max_length)


def cut_left(ids, max_length):
    """The last max_length ids (all of them for max_length 0): TRL's left truncation of a prompt."""
    return ids[-max_length:] if max_length > 0 else ids


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
            with open(path, encoding="utf-8-sig", newline="") as f:  # -sig: a byte-order mark is not part of the first column's name
                rows = list(csv.DictReader(f))
        except (UnicodeDecodeError, csv.Error) as e:
            raise DataError(f"{path}: not a UTF-8 CSV file ({e})") from None
        for n, row in enumerate(rows, 2):  # line 1 is the header
            extra = row.pop(None, None)  # csv puts the fields beyond the header's under the key None
            yield f"{path}:{n}", DataError(f"{path}:{n}: {len(extra)} more fields than the header's {len(row)}") if extra else row
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
        ans = rewards.first_boxed(row["solution"])  # the first \\boxed{}, as the released loader takes it
    _check(isinstance(ans, str) and ans.strip(), where, "field 'answer' missing (and no \\boxed{} in 'solution')")
    return {"question": q, "answer": ans.strip(), "level": row.get("level")}


def _countdown_row(where, row):
    if "nums" not in row and "input" in row:  # the released 3-number test file: {"input": "30,100,93", "output": "23"}
        row = {"nums": row["input"], "target": row.get("output")}
    nums, target = row.get("nums"), row.get("target")
    if isinstance(nums, str):  # CSV: "25 3 2" or "[25, 3, 2]"
        nums = [int(x) for x in re.findall(r"-?\d+", nums)]
    ints = isinstance(nums, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in nums)
    _check(ints and len(nums) == 3, where, f"field 'nums' must be 3 integers, got {str(nums)[:40]}")
    if isinstance(target, str) and re.fullmatch(r"\s*-?\d+\s*", target):  # CSV
        target = int(target)
    _check(isinstance(target, int) and not isinstance(target, bool), where, f"field 'target' must be an integer, got {target!r}")
    solutions = countdown_solutions(nums, target)  # one of them is the SFT answer (sft.py)
    return {"nums": nums, "target": target, **({"expr": solutions[0]} if solutions else {})}


def _sudoku_row(where, row):
    row = {k.lower(): v for k, v in row.items()}  # SPG's CSV files: Puzzle, Solution
    p, s = str(row.get("puzzle", "")).replace(".", "0"), str(row.get("solution", ""))
    p = p.zfill(16) if re.fullmatch(r"\d{12,15}", p) else p  # a CSV reader that took the puzzle for a number lost its leading 0s
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


def _hub(*args, **kwargs):
    from datasets import load_dataset

    try:
        return load_dataset(*args, **kwargs)
    except Exception as e:  # no network, no such dataset, a damaged cache: datasets raises many types
        raise DataError(f"hub dataset {args[0]} cannot be loaded ({first_line(e)}); give a local file as train_file/eval_file") from None


def gsm8k_hub(split):
    """train: openai/gsm8k; test: madrylab/gsm8k-platinum (GSM8K's test set with its label errors
    fixed or removed), every item, as in the released run."""
    name, rows = ("openai/gsm8k", _hub("openai/gsm8k", "main", split="train")) if split == "train" else (
        "madrylab/gsm8k-platinum", _hub("madrylab/gsm8k-platinum", split="test"))  # fmt: skip
    return [_gsm8k_row(f"{name}[{split}] row {i}", r) for i, r in enumerate(rows)]


def math_hub(split):
    """test: HuggingFaceH4/MATH-500; train: qwedsacf/competition_math (MATH's 12.5k train and test
    problems) minus the MATH-500 problems, levels 1-4 (level 5 is out of LLaDA's reach)."""
    held_out = [_math_row(f"HuggingFaceH4/MATH-500 row {i}", r) for i, r in enumerate(_hub("HuggingFaceH4/MATH-500", split="test"))]
    if split == "test":
        return held_out
    seen, items = {it["question"] for it in held_out}, []
    for i, r in enumerate(_hub("qwedsacf/competition_math", split="train")):
        if r.get("problem") in seen or str(r.get("level") or "")[-1:] not in set("01234"):
            continue
        try:
            items.append(_math_row(f"qwedsacf/competition_math row {i}", r))
        except DataError:  # no \\boxed{} answer in the solution: the released loader drops these too
            pass
    return items


COUNTDOWN_TRAIN_ROWS = 20_000  # the released run trains on the 3-number items of the first 20,000 rows


def countdown_hub(split):
    """Jiayi-Pan/Countdown-Tasks-3to4, 3-number items only: train from its first 20,000 rows, test
    the first 256 3-number items after them (the release's own 3-number test file, from SPG, loads
    as eval_file; train.py then drops its problems from training, as the release does)."""
    rows = _hub("Jiayi-Pan/Countdown-Tasks-3to4", split="train")
    part = range(min(COUNTDOWN_TRAIN_ROWS, len(rows))) if split == "train" else range(COUNTDOWN_TRAIN_ROWS, len(rows))
    items = []
    for i in part:
        if len(rows[i]["nums"]) == 3:
            items.append(_countdown_row(f"Jiayi-Pan/Countdown-Tasks-3to4 row {i}", rows[i]))
            if split == "test" and len(items) == 256:
                break
    return items


def problem_key(task_name, item):
    """What makes two items the same problem: the question; Countdown's numbers and target; a Sudoku's
    solution grid (a test grid must never be the answer to a training puzzle)."""
    if task_name == "countdown":
        return (tuple(sorted(item["nums"])), item["target"])
    return item["solution"] if task_name == "sudoku" else item["question"]


def without_test_problems(task_name, train_items, test_items):
    held_out = {problem_key(task_name, it) for it in test_items}
    return [it for it in train_items if problem_key(task_name, it) not in held_out]


# ---------------------------------------------------------------------------------------------
# the tasks, one row each


@dataclass(frozen=True)
class Task:
    question: Callable  # (item, compact) -> the user turn's text
    parse_row: Callable  # (where, row dict of a local file) -> item, or DataError
    reward: Callable  # (completion, answer) -> float: r_i of the group-relative advantage
    accuracy: Callable  # (completion, answer) -> float in [0, 1], the reported accuracy
    answer: Callable  # item -> what reward and accuracy compare against
    hub: Callable | None = None  # split -> items, through `datasets` (needs network)
    generate: Callable | None = None  # (n, seed, split, unique, **knobs) -> items with solutions
    solution: Callable | None = None  # item -> the supervised completion text (sft.py)
    knobs: tuple = ()  # config keys the generator takes (difficulty)
    system_prompt: str = ""  # the task's own system turn (system_prompt = "task")


def _answer_field(item):
    return item["answer"]


def _whole_item(item):
    return item


TASKS = {
    "gsm8k": Task(word_problem, _gsm8k_row, rewards.gsm8k_reward, rewards.gsm8k_correct, _answer_field, hub=gsm8k_hub,
                  system_prompt=MATH_PROMPT),
    "math": Task(word_problem, _math_row, rewards.math_reward, rewards.math_correct, _answer_field, hub=math_hub,
                 system_prompt=MATH_PROMPT),
    "countdown": Task(countdown_question, _countdown_row, rewards.countdown_reward, rewards.countdown_correct, _whole_item,
                      hub=countdown_hub, generate=countdown_items, solution=countdown_solution_text, knobs=("num_range", "target_range"),
                      system_prompt=COUNTDOWN_PROMPT),
    "sudoku": Task(sudoku_question, _sudoku_row, rewards.sudoku_reward, rewards.sudoku_accuracy, _whole_item,
                   generate=sudoku_items, solution=sudoku_solution_text, knobs=("sudoku_blanks", "sudoku_test_blanks"),
                   system_prompt=SUDOKU_PROMPT),
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
        pair = isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(x, int) and not isinstance(x, bool) for x in v)
        if key.endswith("_range") and not (pair and 0 <= v[0] <= v[1]):
            raise ValueError(f"--{key}={v!r} must be (low, high) with 0 <= low <= high")
        if key == "sudoku_test_blanks" and not (isinstance(v, (tuple, list)) and all(
                isinstance(p, (tuple, list)) and len(p) == 2 and isinstance(p[0], int) and 0 <= p[0] <= 12 and isinstance(p[1], int)
                and p[1] >= 0 for p in v) and (not v or sum(p[1] for p in v) > 0)):  # fmt: skip
            raise ValueError(f"--sudoku_test_blanks={v!r} must be ((blanks, weight), ...) with blanks in 0..12 and weights >= 0")
        if key == "sudoku_blanks" and not (pair and 0 <= v[0] <= v[1] <= 12):
            raise ValueError(f"--sudoku_blanks={v!r} must be (low, high) with 0 <= low <= high <= 12: a unique 4x4 solution needs 4 clues")


def generator_knobs(task_name, cfg):
    """The difficulty knobs of a generated task, taken from a script's config dict."""
    return {k: cfg[k] for k in task(task_name).knobs}


def test_set(task_name, path, n, seed, split="test", **gen):
    """The held-out items of a run with this seed: train.py and eval.py evaluate on the same ones.
    n < 0: the whole test set (a file or the hub); a file or hub split is read whole, then cut to n.
    split="validation": generated problems of the validation part instead (tuning never reads test)."""
    if split not in ("test", "validation"):
        raise ValueError(f"eval_split={split!r} must be 'test' or 'validation'")
    if split == "validation" and (path or not task(task_name).generate):
        raise ValueError(f"eval_split='validation' exists for generated tasks only (task={task_name!r}, eval_file={path!r}): "
                         "pass a validation file as eval_file instead")  # fmt: skip
    if n < 0 and not path and task(task_name).generate:
        raise ValueError(f"eval_items={n} (the whole test set) needs eval_file (a file or 'hub'): generated test sets take a count")
    items = load_items(task_name, split, path or None, n=None if path or n < 0 else n, seed=seed + 1, **gen)
    return items if n < 0 else items[:n]


def load_items(task_name, split="train", path=None, n=None, seed=0, skip_bad=False, **gen):
    """One entry point for train/eval: a local file, "hub" (the task's hub source, the released run's
    data), or, without either, generated items (`gen` holds the difficulty knobs; a test set is
    distinct problems, training samples with replacement) or the hub for tasks without a generator."""
    t = task(task_name)
    if path and path != "hub":
        return load_file(task_name, path, skip_bad, limit=n)
    if t.generate and not path:
        return t.generate(n or 256, seed=seed, split=split, unique=split != "train", **gen)
    if t.hub is None:
        raise ValueError(f"task={task_name!r} has no hub source; pass a local file")
    items = t.hub(split)
    return items[:n] if n else items
