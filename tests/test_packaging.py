"""pyproject.toml: `pip install -e .` installs every module, with requirements.txt's pins."""

import glob
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IGNORED = {"models", "runs", "bench", "tests", "configs", "build", "__pycache__"}


def test_project_lists_every_module_and_the_pinned_requirements():
    project = tomllib.load(open(os.path.join(ROOT, "pyproject.toml"), "rb"))
    modules = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "*.py"))}
    assert set(project["tool"]["setuptools"]["py-modules"]) == modules
    packages = {os.path.basename(os.path.dirname(p)) for p in glob.glob(os.path.join(ROOT, "*", "__init__.py"))}
    assert set(project["tool"]["setuptools"]["packages"]) == packages == {"plumbing", "tasks", "tools"}
    assert len(modules) <= 8  # the root is train.py, eval.py and the algorithm; the rest lives in packages
    lines = [ln.split("#")[0].strip() for ln in open(os.path.join(ROOT, "requirements.txt"))]
    required = {re.split(r"[=<>\[]", ln)[0]: ln for ln in lines if ln}
    declared = {re.split(r"[=<>\[]", d)[0]: d for d in project["project"]["dependencies"]}
    extras = {
        re.split(r"[=<>\[]", d)[0] for group in project["project"]["optional-dependencies"].values() for d in group
    }
    assert {k: v for k, v in required.items() if k not in extras} == declared  # same packages, same pins
    assert project["project"]["requires-python"] == ">=3.11"


def test_requirements_spell_extras_as_pip_of_any_version_matches_them():
    """An extra in a requirement is spelled in its normalised form (PEP 685: lowercase, - between words): pip
    before 23.3 compares the spelling as written, so `math-verify[antlr4_13_2]` warned that math-verify has no
    such extra (its metadata says antlr4-13-2) and ignored it."""
    project = tomllib.load(open(os.path.join(ROOT, "pyproject.toml"), "rb"))
    lines = [ln.split("#")[0].strip() for ln in open(os.path.join(ROOT, "requirements.txt"))]
    for requirement in [ln for ln in lines if ln] + project["project"]["dependencies"]:
        for extra in re.findall(r"\[([^\]]*)\]", requirement):
            for name in extra.split(","):
                assert name.strip() == re.sub(r"[-_.]+", "-", name.strip()).lower(), requirement


def test_the_wheel_holds_every_file_and_its_modules_import_from_anywhere(tmp_path):
    """`pip install .` (and -e): the root modules, plumbing/, tasks/ and tools/ all land, and import with the
    repository nowhere on the path."""
    source = tmp_path / "source"  # pip builds in the tree it is given: a copy, not the checkout
    shutil.copytree(ROOT, source, ignore=lambda d, names: [n for n in names if n in IGNORED or n.startswith(".")])
    build = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(tmp_path),
        source,
    ]
    subprocess.run(build, check=True, capture_output=True, timeout=300)
    (wheel,) = glob.glob(f"{tmp_path}/*.whl")
    ours = {
        os.path.relpath(p, ROOT) for d in ("", "plumbing/", "tasks/", "tools/") for p in glob.glob(f"{ROOT}/{d}*.py")
    }
    assert ours <= set(zipfile.ZipFile(wheel).namelist())
    install = [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", f"{tmp_path}/site", wheel]
    subprocess.run(install, check=True, capture_output=True, timeout=300)
    code = "import agrpo, eval, train, plumbing.checkpoint, tools.sft, tools.export; print(train.__file__)"
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}/site")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith(f"{tmp_path}/site"), out.stderr[-2000:]
