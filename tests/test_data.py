"""data.py: generators make valid items deterministically; loaders name what is malformed."""

import json
import os
import re
import shutil
import sys

import pytest
import warm

from plumbing import data
from plumbing.data import (
    DataError,
    build_prompt,
    check_task_options,
    load_file,
    load_items,
    split_of,
    system_prompt_text,
    task,
    task_options,
)
from plumbing.tiny_llada import build_tokenizer as tiny_tokenizer
from rewards import countdown_correct, countdown_reward, math_reward, sudoku_reward
from tasks.countdown import generate as countdown_items
from tasks.countdown import solution as countdown_solution_text
from tasks.countdown import solutions as countdown_solutions
from tasks.sudoku import GRIDS
from tasks.sudoku import count_solutions as sudoku_count_solutions
from tasks.sudoku import generate as sudoku_items


def test_countdown_items_solvable_and_seeded():
    items = countdown_items(300, seed=1)
    assert items == countdown_items(300, seed=1) and items != countdown_items(300, seed=2)
    for it in items:
        assert len(it["nums"]) == 3 and 1 <= it["target"] <= 100
        assert countdown_solutions(it["nums"], it["target"])  # the solver finds a solution
        assert countdown_reward(countdown_solution_text(it), it) == 4.0  # the shipped one is right


def test_generated_data_is_the_data_the_shipped_models_and_results_used():
    """The generators are pinned: a faster or tidier generator must draw the very same problems, or
    the shipped base models (models/) and every recorded result would describe other data."""
    import hashlib

    digest = lambda items: hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]  # noqa: E731
    # the generator's defaults are its config block's, the ranges the shipped models were trained on
    assert digest(countdown_items(2000, seed=0, split="train")) == "736bf77559bbf465"
    assert digest(sudoku_items(500, seed=0, split="train", sudoku_blanks=(10, 10))) == "b9734cc119a56a1f"


def test_countdown_solver_finds_and_refuses():
    assert "(25+3)*2" in countdown_solutions([25, 3, 2], 56) or countdown_solutions([25, 3, 2], 56)
    item = {"nums": [25, 3, 2], "target": 56}
    assert all(countdown_correct(f"<answer>{e}=56</answer>", item) for e in countdown_solutions([25, 3, 2], 56))
    assert countdown_solutions([1, 1, 1], 100) == []


def test_sudoku_items_unique_and_seeded():
    items = sudoku_items(100, seed=3, sudoku_blanks=(10, 10))
    assert items == sudoku_items(100, seed=3, sudoku_blanks=(10, 10))
    for it in items:
        grid = [int(c) for c in it["puzzle"]]
        assert grid.count(0) == 10
        assert sudoku_count_solutions(grid, limit=5) == 1
        assert sudoku_reward(f"<answer>{it['solution']}</answer>", it) == 4.0
    with pytest.raises(ValueError, match="blanks"):
        sudoku_items(1, sudoku_blanks=(4, 14))


def test_sudoku_split_holds_out_solution_grids():
    """Test puzzles never share a solution grid with training puzzles (a model cannot answer a test
    puzzle from a memorised training grid), and the generator reaches every grid, not a subset."""
    train = sudoku_items(3000, seed=0, sudoku_blanks=(7, 12), split="train")
    test = sudoku_items(256, seed=1, sudoku_blanks=(7, 12), split="test", unique=True)
    valid = sudoku_items(256, seed=1, sudoku_blanks=(7, 12), split="validation", unique=True)
    grids = [{it["solution"] for it in part} for part in (train, valid, test)]
    assert not grids[0] & grids[1] and not grids[0] & grids[2] and not grids[1] & grids[2]
    assert (
        len(grids[0]) > 200 and sum(map(len, grids)) == 288
    )  # about 80% of the 288 grids on the train side, every grid reached
    assert {it["puzzle"].count("0") for it in test} == set(range(7, 13))


def test_prompt_uses_chat_template():
    tok = tiny_tokenizer()
    item = {"nums": [1, 2, 3], "target": 7}
    text = tok.decode(build_prompt(tok, "countdown", item, system_prompt="Be brief.", compact=True))
    assert text == "<|system|>Be brief.<|eot|><|user|>1 2 3 -> 7<|eot|><|assistant|>"
    assert "[1, 2, 3]" in tok.decode(build_prompt(tok, "countdown", item))


def test_system_prompt_choices(tmp_path):
    assert system_prompt_text("sudoku", "task") == task("sudoku").SYSTEM_PROMPT != ""
    assert system_prompt_text("gsm8k", "") == "" and system_prompt_text("gsm8k", "Be brief.") == "Be brief."
    exact = "Line one.\n  Line two, é.\n"
    (tmp_path / "p.txt").write_text(exact, encoding="utf-8")
    assert system_prompt_text("gsm8k", str(tmp_path / "p.txt")) == exact  # a .txt file's exact text, byte for byte
    with pytest.raises(DataError, match=r"^system_prompt=.*missing\.txt: No such file"):
        system_prompt_text("gsm8k", str(tmp_path / "missing.txt"))


def test_task_prompts_examples_earn_full_reward():
    """Each task's system turn asks for the format its reward reads: the examples it shows score the
    full reward (4) on their own problems, and the math template's shape does too."""
    cd = re.search(
        r"numbers (\[[^]]*\]) and the target (\d+).*?(<answer>.*?</answer>)", task("countdown").SYSTEM_PROMPT, re.S
    )
    item = {"nums": json.loads(cd.group(1)), "target": int(cd.group(2))}
    assert countdown_reward("<think>x</think>" + cd.group(3), item) == 4.0
    shots = re.findall(
        r"Puzzle: (\d{16})\n(<think>.*?</think>\n<answer>.*?</answer>)", task("sudoku").SYSTEM_PROMPT, re.S
    )
    assert len(shots) == 2
    for puzzle, completion in shots:
        solution = re.search(r"<answer>\s*(\d{16})", completion).group(1)
        grid = [int(c) for c in puzzle]
        assert sudoku_count_solutions(grid) == 1 and all(p in "0" or p == s for p, s in zip(puzzle, solution))
        units = [[r * 4 + c for c in range(4)] for r in range(4)] + [[r * 4 + c for r in range(4)] for c in range(4)]
        units += [[(br + r) * 4 + bc + c for r in (0, 1) for c in (0, 1)] for br in (0, 2) for bc in (0, 2)]
        assert all({solution[i] for i in unit} == set("1234") for unit in units)  # the shown grid is a solution
        assert sudoku_reward(completion, {"puzzle": puzzle, "solution": solution}) == 4.0
    shape = task("math").SYSTEM_PROMPT.split(":", 1)[1].replace("the final answer", "\\frac{1}{2}")
    assert math_reward(shape, "\\frac12") == 4.0
    assert task("gsm8k").SYSTEM_PROMPT == task("math").SYSTEM_PROMPT


def test_unknown_task():
    with pytest.raises(ValueError, match="task='chess'"):
        task("chess")


def write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_loaders_read_fixtures(tmp_path):
    gsm = write(tmp_path / "g.jsonl", [json.dumps({"question": "2+2?", "answer": "so\n#### 1,004"})])
    assert load_file("gsm8k", gsm) == [{"question": "2+2?", "answer": "1004"}]
    mth = write(tmp_path / "m.jsonl", [json.dumps({"problem": "half?", "solution": "It is $\\boxed{\\frac{1}{2}}$."})])
    assert load_file("math", mth)[0]["answer"] == "\\frac{1}{2}"
    cd = write(tmp_path / "c.jsonl", [json.dumps({"nums": [25, 3, 2], "target": 56})])
    assert [{k: it[k] for k in ("nums", "target")} for it in load_items("countdown", path=cd)] == [
        {"nums": [25, 3, 2], "target": 56}
    ]
    su = write(tmp_path / "s.csv", ["puzzle,solution", "1.3.3....1..4..1,1234341221434321"])
    assert load_file("sudoku", su) == [{"puzzle": "1030300001004001", "solution": "1234341221434321"}]


def test_parquet_loader(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"nums": [[1, 2, 3], [4, 5]], "target": [6, 9]}), tmp_path / "c.parquet")
    with pytest.raises(DataError, match=r"c\.parquet row 1: field 'nums'"):
        load_file("countdown", str(tmp_path / "c.parquet"))


@pytest.mark.parametrize(
    "task_name,suffix,lines,match",
    [
        (
            "gsm8k",
            "jsonl",
            ['{"question": "q", "answer": "#### 3"}', '{"question": "q", "answer": "#### 3"'],
            r"b\.jsonl:2: invalid JSON",
        ),
        ("gsm8k", "jsonl", ['{"question": "q"}'], r"b\.jsonl:1: field 'answer'"),
        (
            "gsm8k",
            "jsonl",
            ['{"question": "q", "answer": "#### none"}'],
            r"b\.jsonl:1: field 'answer' has no final number",
        ),
        ("gsm8k", "jsonl", ["[1, 2]"], r"b\.jsonl:1: a line must be a JSON object"),
        ("math", "jsonl", ['{"problem": "p", "solution": "no box"}'], r"b\.jsonl:1: field 'answer'"),
        (
            "countdown",
            "jsonl",
            ['{"nums": [1, 2, 3], "target": 6}', '{"nums": [1, 2], "target": 3}'],
            r"b\.jsonl:2: field 'nums'",
        ),
        ("countdown", "jsonl", ['{"nums": [1, 2, 3], "target": "six"}'], r"b\.jsonl:1: field 'target'"),
        ("sudoku", "csv", ["puzzle,solution", "1234,1234"], r"b\.csv:2: field 'puzzle'"),
        ("sudoku", "csv", ["puzzle,solution", "1030300001004001,1234341221434322"], r"b\.csv:2: field 'solution'"),
        (
            "sudoku",
            "csv",
            ["puzzle,solution", "2030300001004001,1234341221434321"],
            r"b\.csv:2: field 'solution' contradicts",
        ),
    ],
)
def test_malformed_files_raise_named_error(tmp_path, task_name, suffix, lines, match):
    path = write(tmp_path / f"b.{suffix}", lines)
    with pytest.raises(DataError, match=match):
        load_file(task_name, path)


def test_skip_bad_counts_and_prints(tmp_path, capsys):
    path = write(tmp_path / "c.jsonl", ['{"nums": [1, 2, 3], "target": 6}', "{broken", '{"nums": [1], "target": 1}'])
    with pytest.raises(DataError):
        load_file("countdown", path)
    items = load_file("countdown", path, skip_bad=True)
    assert [(it["nums"], it["target"]) for it in items] == [([1, 2, 3], 6)]
    assert "skipped 2 malformed rows" in capsys.readouterr().out


def test_missing_file_and_unknown_type(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_file("countdown", str(tmp_path / "nope.jsonl"))
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match="unknown file type"):
        load_file("countdown", str(tmp_path / "x.txt"))


BAD_FILES = [  # (file name, bytes, words of the one-line error)
    (
        "bad.jsonl",
        b'{"nums": [1, 2, 3], "target": 6}\n{"nums": [1, 2, 3], "target": 3.5}\n',
        "bad.jsonl:2: field 'target' must be",
    ),
    ("bools.jsonl", b'{"nums": [true, false, true], "target": 1}\n', "bools.jsonl:1: field 'nums' must be 3 integers"),
    (
        "latin1.jsonl",
        '{"nums": [1, 2, 3], "target": 6}\n{"x": "caf\u00e9"}\n'.encode("latin-1"),
        "latin1.jsonl:2: not UTF-8 text",
    ),
    ("broken.parquet", b"PAR1 this is not parquet", "broken.parquet: not a readable Parquet file"),
    ("empty.jsonl", b"\n", "empty.jsonl: no countdown items"),
    ("dir.jsonl/", None, "dir.jsonl: not a file"),
]


def one_line_failure(script, *args):
    """Run a script that must fail; its error is one line and no traceback (idle: ~5 s). Returns stderr."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = warm.run([sys.executable, script, *args], cwd=root, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0, out.stderr[-2000:]
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    return out.stderr


def bad_file(tmp_path, name, content):
    path = tmp_path / name.rstrip("/")
    path.mkdir() if content is None else path.write_bytes(content)
    return path


@pytest.mark.parametrize("name, content, words", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_data_files_raise_a_data_error_naming_them(tmp_path, name, content, words):
    with pytest.raises(DataError, match=re.escape(words)):
        load_items("countdown", path=str(bad_file(tmp_path, name, content)))


@pytest.mark.parametrize(
    "script, bad", [("train.py", BAD_FILES[0]), ("eval.py", BAD_FILES[2])], ids=["train.py", "eval.py"]
)
def test_bad_data_files_stop_the_scripts_with_one_line(tmp_path, script, bad):
    """train.py and eval.py end on a malformed data file with one line naming file, line and field."""
    name, content, words = bad
    path = bad_file(tmp_path, name, content)
    key = "--train_file" if script == "train.py" else "--models=('tiny',) --labels=() --eval_file"
    assert words in one_line_failure(script, *f"{key}={path}".split(), f"--output_dir={tmp_path}/out", "--eval_items=3")


def test_training_on_the_held_out_problems_alone_stops_with_one_line(tmp_path):
    """A train file whose every problem is in the eval file leaves nothing to train on: train.py
    says so in one line (overlapping problems are left out of training)."""
    path = tmp_path / "cd.jsonl"
    path.write_text('{"nums": [25, 3, 2], "target": 56}\n{"nums": [4, 5, 6], "target": 26}\n')
    args = f"--train_file={path}", f"--eval_file={path}", "--eval_items=2", f"--output_dir={tmp_path}/out"
    assert "no training items: all 2 items of train_file=" in one_line_failure("train.py", *args)


def test_local_countdown_rows_get_a_solution_for_sft(tmp_path):
    """A local Countdown file (nums, target) feeds SFT: each solvable row gets a solution."""
    path = tmp_path / "cd.jsonl"
    path.write_text('{"nums": [25, 3, 2], "target": 56}\n{"nums": [1, 1, 1], "target": 100}\n')
    items = load_file("countdown", str(path))
    assert countdown_reward(task("countdown").solution(items[0]), items[0]) == 4.0
    assert task("countdown").solution(items[1]) is None  # unsolvable: left out of SFT


def test_the_default_runs_data_loads():
    """The presets' generated data can be made: 200 distinct held-out problems (a space that is nearly
    used up must not be mistaken for an empty one) and the training items."""
    from plumbing import configurator
    from plumbing.data import test_set as held_out_set  # imported as test_set, pytest would collect it

    for preset in ("configs/tiny_countdown.py", "configs/tiny_sudoku.py"):
        cfg = configurator.configure("train.py", [preset], data.option_files())
        gen = task_options(cfg["task"], cfg)
        test = held_out_set(cfg["task"], "", cfg["eval_items"], cfg["seed"], **gen)
        assert len(test) == cfg["eval_items"] and len({json.dumps(it, sort_keys=True) for it in test}) == len(test)
        assert len(load_items(cfg["task"], "train", None, n=2000, seed=cfg["seed"], **gen)) == 2000


def test_released_data_sources(monkeypatch):
    """The hub loaders on small fixtures in each source's column schema: the released run's data
    and filters (GSM8K-Platinum; competition_math minus MATH-500, levels 1-4, first \\boxed{};
    3-number Countdown items of the first rows)."""
    from plumbing import data

    tables = {
        ("openai/gsm8k", "train"): [{"question": "q1", "answer": "steps\n#### 1,000"}],
        ("madrylab/gsm8k-platinum", "test"): [
            {"question": "q2", "answer": "x\n#### 7", "cleaning_status": "consensus"}
        ],
        ("HuggingFaceH4/MATH-500", "test"): [
            {
                "problem": "p500",
                "solution": "s",
                "answer": "\\frac12",
                "subject": "Algebra",
                "level": 3,
                "unique_id": "test/algebra/1.json",
            }
        ],
        ("qwedsacf/competition_math", "train"): [
            {
                "problem": "p500",
                "level": "Level 3",
                "type": "Algebra",
                "solution": "\\boxed{\\frac12}",
            },  # a MATH-500 problem
            {
                "problem": "p1",
                "level": "Level 4",
                "type": "Algebra",
                "solution": "so \\boxed{\\frac{1}{2}} or \\boxed{9}",
            },
            {"problem": "p2", "level": "Level 5", "type": "Algebra", "solution": "\\boxed{2}"},
            {"problem": "p3", "level": "Level ?", "type": "Algebra", "solution": "\\boxed{3}"},
            {"problem": "p4", "level": "Level 1", "type": "Algebra", "solution": "no box"},
        ],
        ("Jiayi-Pan/Countdown-Tasks-3to4", "train"): [
            {"target": 9, "nums": [2, 3, 4]},
            {"target": 24, "nums": [1, 2, 3, 4]},
            {"target": 5, "nums": [1, 2, 3]},
            {"target": 7, "nums": [1, 2, 4]},
            {"target": 10, "nums": [1, 2, 3, 4]},
            {"target": 6, "nums": [1, 2, 3]},
        ],
    }
    import tasks.countdown
    import tasks.gsm8k
    import tasks.math

    for module in (tasks.gsm8k, tasks.math, tasks.countdown):
        monkeypatch.setattr(module, "hub_dataset", lambda name, *config, split: tables[(name, split)])
    monkeypatch.setattr(tasks.countdown, "HUB_TRAIN_ROWS", 3)
    assert load_items("gsm8k", "train") == [{"question": "q1", "answer": "1000"}]
    assert load_items("gsm8k", "test") == [{"question": "q2", "answer": "7"}]
    assert [(it["question"], it["answer"]) for it in load_items("math", "test")] == [("p500", "\\frac12")]
    assert [(it["question"], it["answer"]) for it in load_items("math", "train")] == [("p1", "\\frac{1}{2}")]
    assert [(it["nums"], it["target"]) for it in load_items("countdown", "train", "hub")] == [
        ([2, 3, 4], 9),
        ([1, 2, 3], 5),
    ]
    assert [(it["nums"], it["target"]) for it in load_items("countdown", "test", "hub")] == [
        ([1, 2, 4], 7),
        ([1, 2, 3], 6),
    ]
    assert data.test_set("countdown", "hub", -1, 0) == load_items("countdown", "test", "hub")  # -1: the whole test set
    with pytest.raises(ValueError, match="eval_items=-1"):
        data.test_set("countdown", "", -1, 0)  # a generated test set needs a count


def test_released_local_files(tmp_path):
    """The released run's local files: Countdown's 3-number test file and SPG's Sudoku CSVs (read as
    numbers by some tools, so a puzzle may have lost its leading zeros). A training set drops the
    problems of the test set, and a Sudoku test grid is never a training answer."""
    from plumbing import data

    cd = write(
        tmp_path / "cd3.jsonl", ['{"input": "30,100,93", "output": "23"}', '{"input": "83,18,75", "output": "10"}']
    )
    assert [(it["nums"], it["target"]) for it in load_file("countdown", cd)] == [
        ([30, 100, 93], 23),
        ([83, 18, 75], 10),
    ]
    su = write(
        tmp_path / "sudoku.csv",
        ["Puzzle,Solution", "310200404001043,4312213434211243", "1002020100030310,1432324141232314"],
    )
    assert load_file("sudoku", su)[0] == {"puzzle": "0310200404001043", "solution": "4312213434211243"}
    train = [{"nums": [93, 30, 100], "target": 23}, {"nums": [1, 2, 3], "target": 6}]
    assert data.without_test_problems("countdown", train, load_file("countdown", cd)) == train[1:]
    other_puzzle_same_grid = {"puzzle": "4300210034001200", "solution": "4312213434211243"}
    assert data.without_test_problems("sudoku", [other_puzzle_same_grid], load_file("sudoku", su)) == []


def test_countdown_generator_with_zero_in_range_makes_valid_problems():
    """Numbers may be 0: a division by zero is a rejected draw, never a crash, and every generated
    solution scores full reward."""
    items = countdown_items(300, seed=5, num_range=(0, 20), target_range=(0, 100))
    assert any(0 in it["nums"] for it in items)
    assert all(countdown_reward(task("countdown").solution(it), it) == 4.0 for it in items)


def test_csv_with_a_byte_order_mark_or_an_extra_field(tmp_path):
    """A CSV saved with a byte-order mark reads as without one; a row with more fields than the
    header is named, never read with its extra fields dropped."""
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbfPuzzle,Solution\n1204400100102000,1234432134122143\n")
    assert load_file("sudoku", str(tmp_path / "bom.csv")) == [
        {"puzzle": "1204400100102000", "solution": "1234432134122143"}
    ]
    (tmp_path / "extra.csv").write_text("puzzle,solution\n1204400100102000,1234432134122143,9\n")
    with pytest.raises(DataError, match=re.escape("extra.csv:2: 1 more fields than the header's 2")):
        load_file("sudoku", str(tmp_path / "extra.csv"))


def test_unreachable_hub_data_is_one_data_error(monkeypatch):
    import datasets

    def offline(*a, **k):
        raise ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="hub dataset openai/gsm8k cannot be loaded .*give a local file"):
        load_items("gsm8k", "train", "hub")


def test_sudoku_test_set_has_the_published_blank_distribution():
    """The LLaDA preset's generated test set has the blank counts of SPG's 256-puzzle test file
    (7: 82, 8: 83, 9: 76, 11: 12, 12: 3); training puzzles keep their own range; the grid split is
    226 / 21 / 41 of the 288 grids."""
    import collections

    from plumbing.configurator import configure

    cfg = configure(
        os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "train.py"),
        ["configs/llada_sudoku.py"],
        data.option_files(),
    )
    gen = task_options("sudoku", cfg)
    test = data.test_set("sudoku", cfg["eval_file"], cfg["eval_items"], cfg["seed"], **gen)
    assert collections.Counter(it["puzzle"].count("0") for it in test) == {7: 82, 8: 83, 9: 76, 11: 12, 12: 3}
    assert len({it["puzzle"] for it in test}) == 256
    train = sudoku_items(600, seed=0, split="train", **gen)
    assert {it["puzzle"].count("0") for it in train} == set(range(7, 13))
    assert collections.Counter(split_of("".join(map(str, g))) for g in GRIDS) == {
        "train": 226,
        "validation": 21,
        "test": 41,
    }
    with pytest.raises(ValueError, match="sudoku_test_blanks"):
        check_task_options("sudoku", {"sudoku_blanks": (7, 12), "sudoku_test_blanks": ((13, 1),)})


def test_a_new_task_is_a_copy_of_the_template(tmp_path):
    """A copy of the project plus tasks/toy.py, a copy of tasks/_template.py, nothing else edited: --help lists
    its option, a bad option stops in one line, train.py trains it a step, eval.py scores the run (one model,
    no labels given) on the toy's test set. The template itself is not a task, and an assignment after its config
    block is not a key."""
    assert "_template" not in data.TASK_NAMES
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    copy = tmp_path / "project"
    for folder in ("", "plumbing", "tasks"):
        (copy / folder).mkdir(parents=True, exist_ok=True)
        for name in os.listdir(os.path.join(root, folder)):
            if name.endswith(".py"):
                shutil.copy(os.path.join(root, folder, name), copy / folder / name)
    template = (copy / "tasks" / "_template.py").read_text()
    end = "# --- end of config\n"
    (copy / "tasks" / "toy.py").write_text(
        template.replace(end, end + "toy_unlisted = 4  # after the block: not a key\n")
    )

    def script(*args):
        return warm.run([sys.executable, *args], cwd=copy, capture_output=True, text=True, timeout=600)

    listed = script("train.py", "--help").stdout
    assert "--template_digits" in listed and "--toy_unlisted" not in listed  # the config block's keys only
    bad = script("train.py", "--task=toy", "--template_digits=9")
    assert (
        bad.returncode != 0 and bad.stderr.strip() == "config error: --template_digits=9 must be in [1, 6]"
    )  # the range its comment ends with
    small = ["--model_name_or_path=tiny", "--num_generations=2", "--per_device_train_batch_size=2", "--eval_items=4"]
    out = script(
        "train.py", "--task=toy", "--template_digits=2", "--max_steps=1", *small, f"--output_dir={tmp_path}/run"
    )
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [json.loads(line) for line in open(tmp_path / "run" / "log.jsonl")]
    assert [r["step"] for r in rows] == [1] and 0 <= rows[0]["reward"] <= 1
    assert json.load(open(tmp_path / "run" / "final.json"))["eval_items"] == 4
    out = script("eval.py", f"--models=('{tmp_path}/run',)", f"--output_dir={tmp_path}/eval")
    assert out.returncode == 0, out.stderr[-2000:]
    results = json.load(open(tmp_path / "eval" / "results.json"))
    assert (
        results["config"]["task"] == "toy" and results["config"]["template_digits"] == 2 and len(results["rows"]) == 1
    )
