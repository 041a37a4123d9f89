"""pyproject.toml: `pip install -e .` installs every module, with requirements.txt's pins."""

import glob
import os
import re
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_project_lists_every_module_and_the_pinned_requirements():
    project = tomllib.load(open(os.path.join(ROOT, "pyproject.toml"), "rb"))
    modules = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "*.py"))}
    assert set(project["tool"]["setuptools"]["py-modules"]) == modules
    packages = {os.path.basename(os.path.dirname(p)) for p in glob.glob(os.path.join(ROOT, "*", "__init__.py"))}
    assert set(project["tool"]["setuptools"]["packages"]) == packages == {"tasks"}
    lines = [ln.split("#")[0].strip() for ln in open(os.path.join(ROOT, "requirements.txt"))]
    required = {re.split(r"[=<>\[]", ln)[0]: ln for ln in lines if ln}
    declared = {re.split(r"[=<>\[]", d)[0]: d for d in project["project"]["dependencies"]}
    extras = {
        re.split(r"[=<>\[]", d)[0] for group in project["project"]["optional-dependencies"].values() for d in group
    }
    assert {k: v for k, v in required.items() if k not in extras} == declared  # same packages, same pins
    assert project["project"]["requires-python"] == ">=3.11"
