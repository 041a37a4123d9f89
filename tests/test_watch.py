"""Watching a run (plumbing/watch.py): each sign of a run that stopped learning is said once, at the step it has
held for its number of steps in a row; train.py says it and draws curves.png; tools/plot.py overlays runs."""

import json
import os
import subprocess
import sys

import pytest
import warm

from plumbing import watch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOOD = dict(frac_reward_zero_std=0.25, entropy=1.0, clip_frac=0.01, ratio_dev=0.01)  # a row that learns
BAD = dict(frac_reward_zero_std=1.0, entropy=0.05, clip_frac=0.9, ratio_dev=0.5)  # each sign, as SIGNS reads it


@pytest.mark.parametrize("name", list(watch.SIGNS))
def test_each_sign_is_said_once_after_its_steps_in_a_row(name):
    """A sign holding steps - 1 times in a row, then broken, says nothing; holding `steps` times says one line
    naming the step and the key to change, and never again in the run. The other signs stay quiet."""
    key, _, steps, _ = watch.SIGNS[name]
    state = watch.new_watch(epsilon=0.2)
    rows = [GOOD] + [GOOD | {key: BAD[key]}] * (steps - 1) + [GOOD] + [GOOD | {key: BAD[key]}] * (steps + 5)
    said = {}
    for step, row in enumerate(rows, 1):
        for line in watch.warnings(state, row | {"step": step}):
            said[step] = line
    assert list(said) == [1 + (steps - 1) + 1 + steps]
    line = said[1 + steps + steps]
    assert line.startswith(f"warning: step {1 + steps + steps}: ") and "--" in line and "\n" not in line


def test_entropy_is_compared_with_the_runs_first_value():
    """Entropy collapse is relative: a run that starts at 0.05 nats is not warned about for staying there."""
    state = watch.new_watch(epsilon=0.2)
    assert not any(watch.warnings(state, GOOD | {"entropy": 0.05, "step": s}) for s in range(1, 20))


def test_a_run_that_learns_nothing_is_told_and_drawn(tmp_path):
    """The random embedded model gets no reward on Countdown: train.py says so at step 10 (once) and leaves
    curves.png; tools/plot.py overlays two runs with their names, and refuses a folder that is not a run."""
    args = ["--model_name_or_path=tiny", "--max_steps=10", "--eval_items=0", "--num_generations=4"]
    args += ["--per_device_train_batch_size=4", "--sampling_steps=4"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = warm.run([sys.executable, "train.py", *args, f"--output_dir={tmp_path}/flat"], cwd=ROOT, env=env,
                   capture_output=True, text=True, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    text = (out.stdout + out.stderr).replace("\r", "\n")
    rows = [json.loads(line) for line in open(tmp_path / "flat" / "log.jsonl")]
    assert all(r["frac_reward_zero_std"] == 1.0 for r in rows)
    assert [line for line in text.splitlines() if line.startswith("warning: step")] == [
        "warning: step 10: " + watch.SIGNS["flat"][3].format(steps=10)
    ]
    assert (tmp_path / "flat" / "curves.png").read_bytes().startswith(b"\x89PNG")
    plot = [sys.executable, "tools/plot.py", str(tmp_path / "flat"), "/tmp/../" + str(tmp_path / "flat")]
    res = subprocess.run([*plot, f"--out={tmp_path}/both.png"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0 and (tmp_path / "both.png").read_bytes().startswith(b"\x89PNG"), res.stderr
    res = subprocess.run([sys.executable, "tools/plot.py", str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 1 and res.stderr.strip() == f"plot: {tmp_path} is not a training run (no log.jsonl)"


def test_held_out_points_read_before_during_and_after():
    rows = [{"step": 1}, {"step": 5, "eval_accuracy": 0.3, "eval_accuracy_se": 0.1}]
    final = dict(accuracy_before=0.1, accuracy_before_se=0.05, accuracy_after=0.4, accuracy_after_se=0.07, steps=10)
    assert watch.held_out_points(rows, final) == ([0, 5, 10], [0.1, 0.3, 0.4], [0.05, 0.1, 0.07])
    assert watch.running_mean([1, 2, 3, 4], 2) == [1, 1.5, 2.5, 3.5]
