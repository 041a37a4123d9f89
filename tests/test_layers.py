"""Layers point one way: the root files (the algorithm, train.py, eval.py) and tasks/ use plumbing/; plumbing/
never imports a root file, a task or a tool, and tools/ never import a root file. Every import statement is read,
at a file's top or inside a function. Tasks are found by name through plumbing/data.task, the one place plumbing
reaches them: a fork's new task is a file, not an edit of the loader."""

import ast
import glob
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT_FILES = {os.path.basename(f)[:-3] for f in glob.glob(f"{ROOT}/*.py")}
BELOW = {  # a folder: what its files may not import
    "plumbing": ROOT_FILES | {"tasks", "tools"},
    "tools": ROOT_FILES,
}


def imported(source):
    """The top-level module of every import in `source`: import statements and importlib.import_module("x")."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module.split(".")[0]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module":
            if node.args and isinstance(node.args[0], ast.Constant):
                yield node.args[0].value.split(".")[0]


def upward_imports():
    """(file, module) for each import that points up a layer."""
    found = []
    for folder, forbidden in BELOW.items():
        for path in sorted(glob.glob(f"{ROOT}/{folder}/*.py")):
            with open(path) as f:
                found += [(os.path.relpath(path, ROOT), m) for m in imported(f.read()) if m in forbidden]
    return found


def test_no_import_points_up():
    assert ROOT_FILES >= {"train", "eval", "sample", "likelihood", "blocks", "agrpo", "rewards"}
    assert upward_imports() == []


def test_the_reader_sees_every_kind_of_import():
    """The check would see an upward import written any of these ways."""
    source = """
import sample
from likelihood import completion_mask
import blocks as b
def f():
    from agrpo import k3
    importlib.import_module("rewards")
from plumbing import logs
import torch
"""
    assert sorted(imported(source)) == sorted(
        ["sample", "likelihood", "blocks", "agrpo", "rewards", "plumbing", "torch"]
    )
