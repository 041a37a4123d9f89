"""Data: a task's items from local files, the hub or its generator, and its prompts as chat-template
token ids. What a task is (its question, answer, reward, data sources) is its file in tasks/
(tasks/__init__.py lists what one defines); nothing here names a task.

Generated tasks split their problem space by a hash of each problem (split_of), so train,
validation and test never share a problem, whatever their sizes.
"""

import csv
import functools
import hashlib
import importlib
import json
import os
import zlib

import torch

from plumbing.configurator import declared
from plumbing.ddp import seeded
from plumbing.errors import first_line

TASKS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tasks")
TASK_NAMES = tuple(sorted(f[:-3] for f in os.listdir(TASKS_DIR) if f.endswith(".py") and not f.startswith("_")))
SPLITS = ("test", "validation")  # the held-out parts a run can be scored on (generated tasks: split_of)
REQUIRED = ("SYSTEM_PROMPT", "question", "parse_row", "answer", "reward", "accuracy", "problem_key")


class DataError(ValueError):
    """A malformed data file: the message names the file, the line or row, and the field."""


def check(cond, where, msg):
    if not cond:
        raise DataError(f"{where}: {msg}")


# ---------------------------------------------------------------------------------------------
# tasks: one file each in tasks/


def task(name):
    """The task file tasks/<name>.py as a module."""
    if name not in TASK_NAMES:
        raise ValueError(f"task={name!r} does not exist; choose one of {list(TASK_NAMES)} (a file in tasks/ each)")
    t = importlib.import_module(f"tasks.{name}")
    missing = [a for a in REQUIRED if not hasattr(t, a)]
    if missing:
        raise ValueError(
            f"tasks/{name}.py does not define {', '.join(missing)} (tasks/__init__.py lists what a task file defines)"
        )
    return t


def task_file(name):
    return os.path.join(TASKS_DIR, f"{name}.py")


@functools.cache
def option_files():
    """The task files whose config block declares generator options: keys of train.py, eval.py, sft.py
    (read once: every script and task_options call asks)."""
    return tuple(task_file(n) for n in TASK_NAMES if "# --- config" in open(task_file(n)).read())


def task_options(task_name, cfg):
    """The generator options of a task (its config block's keys), taken from a script's config dict."""
    path = task_file(task_name)
    return {k: cfg[k] for k in declared(path)} if path in option_files() else {}


def check_task_options(task_name, cfg):
    """Raise ValueError naming the first option of the task out of range (or an unknown task)."""
    t = task(task_name)
    if hasattr(t, "check_options"):
        t.check_options(**task_options(task_name, cfg))


def split_of(key):
    """'test' for a fixed tenth of all problems, 'validation' for another tenth (for choosing
    hyperparameters without reading the test set), 'train' for the rest: a stable hash of the
    problem itself, so the generated sets never share a problem, whatever their sizes."""
    return {0: "test", 1: "validation"}.get(zlib.crc32(repr(key).encode()) % 10, "train")


def enough(attempts, n, found, what):
    """Stop a generator whose settings cannot deliver n problems: `attempts` counts the tries since
    the last new problem, so a space that is used up (or empty) fails within seconds, not hours,
    while a rare last problem is still found."""
    if attempts > 100_000:
        raise ValueError(
            f"only {found} distinct {what} problems found with these settings: ask for fewer or widen the ranges"
        )


# ---------------------------------------------------------------------------------------------
# prompts


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


def left_pad(prompts, pad_id, device="cpu"):
    """List of token lists -> (ids, attention_mask), padded on the left so completions line up (the sampler's
    prompts and the SFT batches)."""
    P = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), P), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), P), dtype=torch.long)
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty")
        ids[i, P - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, P - len(p) :] = 1
    return ids.to(device), mask.to(device)  # built on the host: one copy each to the device, not one a row


def system_prompt_text(task_name, system_prompt=""):
    """The system turn a run uses: the task's own prompt for "task", none for "", the exact text of
    a file for a path ending in .txt, else `system_prompt` itself."""
    if system_prompt.endswith(".txt"):
        try:
            with open(system_prompt, encoding="utf-8") as f:
                return f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"system_prompt={system_prompt}: {getattr(e, 'strerror', None) or e}") from None
    return task(task_name).SYSTEM_PROMPT if system_prompt == "task" else system_prompt


# ---------------------------------------------------------------------------------------------
# loaders: local files, with errors that name the file, the line or row, and the field


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
                    json.dumps(row, ensure_ascii=False).encode("utf-8")  # a lone surrogate (\ud800) is not text
                except json.JSONDecodeError as e:
                    row = DataError(f"{path}:{n}: invalid JSON ({e.msg})")
                except RecursionError:
                    row = DataError(f"{path}:{n}: invalid JSON (nested too deeply)")
                except UnicodeEncodeError:
                    row = DataError(f"{path}:{n}: a string holds a lone surrogate (\\ud800-\\udfff), not text")
                except ValueError as e:  # Python's limit on the digits of an integer
                    row = DataError(f"{path}:{n}: invalid JSON ({str(e).split(':')[0]})")
                if not isinstance(row, (dict, DataError)):
                    row = DataError(f"{path}:{n}: a line must be a JSON object")
                yield f"{path}:{n}", row
    elif path.endswith(".csv"):
        try:
            with open(
                path, encoding="utf-8-sig", newline=""
            ) as f:  # -sig: a byte-order mark is not part of the first column's name
                rows = list(csv.DictReader(f))
        except (UnicodeDecodeError, csv.Error) as e:
            raise DataError(f"{path}: not a UTF-8 CSV file ({e})") from None
        for n, row in enumerate(rows, 2):  # line 1 is the header
            extra = row.pop(None, None)  # csv puts the fields beyond the header's under the key None
            yield (
                f"{path}:{n}",
                DataError(f"{path}:{n}: {len(extra)} more fields than the header's {len(row)}") if extra else row,
            )
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


def hub_dataset(*args, **kwargs):
    """datasets.load_dataset(*args, **kwargs), or one DataError saying why not."""
    from datasets import load_dataset

    try:
        return load_dataset(*args, **kwargs)
    except Exception as e:  # no network, no such dataset, a damaged cache: datasets raises many types
        raise DataError(
            f"hub dataset {args[0]} cannot be loaded ({first_line(e)}); give a local file as train_file/eval_file"
        ) from None


def without_test_problems(task_name, train_items, test_items):
    key = task(task_name).problem_key
    held_out = {key(it) for it in test_items}
    return [it for it in train_items if key(it) not in held_out]


def run_items(task_name, train_file, eval_file, eval_items, seed, options):
    """(training items, held-out items, a note or None) of a train.py run. Generated tasks draw both
    from disjoint parts of the problem space (split_of); a file or the hub may hold held-out problems
    among its training items: they are left out, and the note says how many."""
    n = 20_000 if hasattr(task(task_name), "generate") else None
    train = load_items(task_name, "train", train_file or None, n=n, seed=seed, **options)
    test = test_set(task_name, eval_file, eval_items, seed, **options) if eval_items else []
    kept = without_test_problems(task_name, train, test)
    if not kept:
        raise DataError(
            f"no training items: all {len(train)} items of train_file={train_file!r} are held-out problems "
            f"(eval_file={eval_file!r}); train on other problems or set eval_items=0"
        )
    left_out = len(train) - len(kept)
    return (
        kept,
        test,
        f"left out {left_out} of {len(train)} training items: they are held-out problems too" if left_out else None,
    )


def items_digest(items):
    """SHA-256 of the items as loaded: a resume refuses a checkpoint trained on other items under the same
    settings (a data file edited since, a task generator changed)."""
    return hashlib.sha256(json.dumps(items, sort_keys=True, default=str).encode()).hexdigest()


def long_prompts_note(tok, task_name, items, system_prompt, compact, max_length, what="training"):
    """A line saying how many prompts are longer than max_length (cut from the left) and naming the
    longest, or None when none is (or max_length is 0, no limit). Generated problems are read from
    their first 1,000: their prompts differ only in their numbers."""
    first = "the first " if hasattr(task(task_name), "generate") and len(items) > 1000 else ""
    items = items[:1000] if first else items
    lengths = [len(build_prompt(tok, task_name, it, system_prompt, compact)) for it in items]
    longest = max(range(len(lengths)), key=lengths.__getitem__) if lengths else None
    if not max_length or longest is None or lengths[longest] <= max_length:
        return None
    over = sum(n > max_length for n in lengths)
    return (
        f"{over} of {first}{len(lengths)} {what} prompts are longer than max_prompt_length={max_length} tokens and "
        f"are cut from the left; the longest, {what} item {longest}, has {lengths[longest]} tokens"
    )


def prompt_items(items, position, n, seed):
    """The n training items at `position` of a run's stream: epoch after epoch, each a fresh seeded
    permutation of the items. A position is global, so any partition over ranks and accumulation
    steps sees the same prompts."""
    epoch, first = divmod(position, len(items))
    orders = [torch.randperm(len(items), generator=seeded(seed, "epoch", e)) for e in (epoch, epoch + 1)]
    return [items[i] for i in torch.cat(orders)[first : first + n].tolist()]


def test_set(task_name, path, n, seed, split="test", **gen):
    """The held-out items of a run with this seed: train.py and eval.py evaluate on the same ones.
    n < 0: the whole test set (a file or the hub); a file or hub split is read whole, then cut to n.
    split="validation": generated problems of the validation part instead (tuning never reads test)."""
    if split not in SPLITS:
        raise ValueError(f"eval_split={split!r} must be one of {SPLITS}")
    generated = hasattr(task(task_name), "generate")
    if split == "validation" and (path or not generated):
        raise ValueError(
            f"eval_split='validation' exists for generated tasks only (task={task_name!r}, eval_file={path!r}): "
            "pass a validation file as eval_file instead"
        )
    if n < 0 and not path and generated:
        raise ValueError(
            f"eval_items={n} (the whole test set) needs eval_file (a file or 'hub'): generated test sets take a count"
        )
    items = load_items(task_name, split, path or None, n=None if path or n < 0 else n, seed=seed + 1, **gen)
    return items if n < 0 else items[:n]


def load_items(task_name, split="train", path=None, n=None, seed=0, skip_bad=False, **gen):
    """One entry point for train/eval: a local file, "hub" (the task's hub source, the released run's
    data), or, without either, generated items (`gen` holds the task's options; a test set is
    distinct problems, training samples with replacement) or the hub for tasks without a generator."""
    t = task(task_name)
    if path and path != "hub":
        return load_file(task_name, path, skip_bad, limit=n)
    if hasattr(t, "generate") and not path:
        return t.generate(n or 256, seed=seed, split=split, unique=split != "train", **gen)
    if not hasattr(t, "load_hub"):
        raise ValueError(f"task={task_name!r} has no hub source; pass a local file")
    items = t.load_hub(split)
    return items[:n] if n else items
