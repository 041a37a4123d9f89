"""The benchmark scripts run end to end in their quick modes (numbers are not checked here)."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("script", ["bench/bench_estimators.py"])
def test_bench_quick(script):
    out = subprocess.run([sys.executable, script, "--quick"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "| stepwise" in out.stdout
