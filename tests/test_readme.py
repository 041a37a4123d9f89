"""README.md read as a new user reads it: every train.py command it gives is a configuration train.py accepts,
a custom run comes first, and what it states about the keys' ranges is what train.py declares."""

import os
import re
import shlex
from types import SimpleNamespace

import pytest

import train
from plumbing import data
from plumbing.configurator import configure

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md")).read()


def train_commands():
    """The arguments of each one-line train.py command of README's code blocks and inline code."""
    lines = [ln[4:] for ln in README.splitlines() if ln.startswith("    ")]
    lines += re.findall(r"`((?:python|torchrun) [^`\n]*train\.py[^`\n]*)`", README)
    commands = []
    for line in lines:
        if (
            "train.py" not in line
            or line.rstrip().endswith("\\")
            or line.startswith(" ")
            or "..." in line
            or "$" in line
        ):
            continue
        words = shlex.split(line.split("#")[0])
        if "train.py" not in words:
            continue
        commands.append(tuple(words[words.index("train.py") + 1 :]))
    return sorted(set(commands))


def test_readme_gives_train_commands():
    assert len(train_commands()) >= 6 and ("--max_steps=20", "--eval_items=50", "--output_dir=runs/first") in set(
        train_commands()
    )


@pytest.mark.parametrize("args", train_commands(), ids=" ".join)
def test_every_train_command_in_the_readme_is_accepted(args):
    if "--help" in args:
        return
    cfg = SimpleNamespace(
        **configure(os.path.join(ROOT, "train.py"), list(args), data.option_files(), train.RANGES, train.CHOICES)
    )
    train.validate(cfg, list(args))


def test_a_custom_run_comes_before_the_reference_sections():
    first = README.index("python train.py --max_steps=")
    assert first < README.index("## Files") and first < README.index("## Configuration")


def test_the_ranges_the_readme_states_are_train_pys():
    assert f"τ in {train.RANGES['threshold']}" in README


def test_the_file_tree_lists_every_task_and_its_reward():
    """README's file tree lists the task files of tasks/ (data.TASK_NAMES, the code's list, and the template), and
    its rewards.py line names every task whose reward lives in rewards.py."""
    tree = next(block for block in README.split("```")[1::2] if "\ntasks/" in block).splitlines()
    at = next(i for i, line in enumerate(tree) if line.startswith("tasks/"))
    listed = tree[at + 1].split() + [tree[at + 2].split()[0]]
    assert sorted(listed) == sorted([f"{name}.py" for name in data.TASK_NAMES] + ["_template.py"])
    rewards_line = next(line for line in tree if line.startswith("rewards.py")).lower()
    for name in data.TASK_NAMES:
        if data.task(name).reward.__module__ == "rewards":
            assert name in rewards_line, name
