"""No lost training, robust numerics, clear errors: train.py on the embedded model is killed at
random moments (and mid-checkpoint), fed NaNs, and given impossible configurations."""

import contextlib
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import warm
from test_train import ROOT, SMALL, assert_same, params, run

from plumbing import checkpoint, manifest, restore

FAST = ["--max_steps=10", "--save_steps=2", "--save_total_limit=3"]


def logged_steps(out_dir):
    rows = []
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        for line in f:
            try:
                rows.append(json.loads(line)["step"])
            except json.JSONDecodeError:
                pass  # a line cut off by the kill
    return rows


def check_after_kill(out_dir):
    """The newest checkpoint loads; at most the steps since it are lost."""
    newest = checkpoint.newest(out_dir)
    done = logged_steps(out_dir) if os.path.exists(os.path.join(out_dir, "log.jsonl")) else []
    if newest is None:
        assert max(done, default=0) < 2 + 2  # killed before (or while) writing the first checkpoint
        return 0
    state = checkpoint.read(newest)
    assert all(torch.isfinite(v).all() for v in checkpoint.tensors(newest).values())
    assert max(done) - state["step"] <= 2  # ckpt_every: the only steps a kill may cost
    return state["step"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    run([f"--output_dir={out}", *FAST])
    return params(f"{out}/checkpoint-10")


@pytest.mark.parametrize("seed", [0, 1])
def test_sigkill_at_a_random_moment_then_resume(tmp_path, uninterrupted, seed):
    cmd = [sys.executable, "train.py", *SMALL, f"--output_dir={tmp_path}", *FAST]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = warm.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    # wait for the first log line (the model is built and training), then kill somewhere in the run
    deadline = time.time() + 120
    while not os.path.exists(f"{tmp_path}/log.jsonl") and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(random.Random(seed).uniform(0.0, 1.5))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    check_after_kill(str(tmp_path))
    run([f"--output_dir={tmp_path}", *FAST, "--resume_from_checkpoint"])
    assert_same(uninterrupted, params(f"{tmp_path}/checkpoint-10"), atol=0)
    assert logged_steps(tmp_path) == list(range(1, 11))  # re-run steps are logged once


@pytest.mark.parametrize("step", [2, 4])
def test_sigkill_while_writing_a_checkpoint(tmp_path, uninterrupted, step):
    """Killed inside the first checkpoint write (step 2: no checkpoint yet, two log lines) or a later
    one: the resume reaches the uninterrupted state and logs every step once."""
    cmd = [sys.executable, "tests/faults.py", f"kill_in_save={step}", "--", *SMALL, f"--output_dir={tmp_path}", *FAST]
    out = warm.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1")
    )
    assert out.returncode == -signal.SIGKILL
    assert os.path.exists(f"{tmp_path}/checkpoint-{step}.tmp") and not os.path.exists(f"{tmp_path}/checkpoint-{step}")
    assert check_after_kill(str(tmp_path)) == step - 2  # the half-written file is never taken for a checkpoint
    run([f"--output_dir={tmp_path}", *FAST, "--resume_from_checkpoint"])
    assert_same(uninterrupted, params(f"{tmp_path}/checkpoint-10"), atol=0)
    assert not any(f.endswith(".tmp") for f in os.listdir(tmp_path))
    assert logged_steps(tmp_path) == list(range(1, 11))


def test_full_disk_stops_with_one_line_and_resumes(tmp_path, uninterrupted):
    cmd = [sys.executable, "tests/faults.py", "disk_full=4", "--", *SMALL, f"--output_dir={tmp_path}", *FAST]
    out = warm.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1")
    )
    assert out.returncode != 0 and "is full: checkpoint 4 not written" in out.stderr and "checkpoint-2" in out.stderr, (
        out.stderr[-2000:]
    )
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()[-1:]) == 1
    assert not any(f.endswith(".tmp") for f in os.listdir(tmp_path))  # nothing left that blocks the resume
    run([f"--output_dir={tmp_path}", *FAST, "--resume_from_checkpoint"])
    assert_same(uninterrupted, params(f"{tmp_path}/checkpoint-10"), atol=0)


def test_corrupt_newest_checkpoint_falls_back_to_an_older_one(tmp_path, uninterrupted):
    run([f"--output_dir={tmp_path}", *FAST])
    with open(f"{tmp_path}/checkpoint-10/optimizer.pt", "r+b") as f:
        f.truncate(1000)
    out = run([f"--output_dir={tmp_path}", *FAST, "--resume_from_checkpoint"])
    text = out.stderr + out.stdout  # its bytes are not those written: refused by its checksum
    assert "checkpoint-10: optimizer.pt is damaged" in text and "resumed from" in text
    assert_same(uninterrupted, params(f"{tmp_path}/checkpoint-10"), atol=0)
    assert logged_steps(tmp_path) == list(range(1, 11))


def test_an_output_dir_belongs_to_one_run(tmp_path):
    """A second run on a folder in use stops naming the holder; a fresh run into a folder holding a
    run is refused unless it resumes or overwrites; a resume that changes what is trained is refused
    naming the key;"""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    first = warm.Popen(
        [sys.executable, "train.py", *SMALL, f"--output_dir={tmp_path}", "--max_steps=1000"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 120
        while not os.path.exists(f"{tmp_path}/log.jsonl") and time.time() < deadline:
            time.sleep(0.1)
        cmd = [sys.executable, "train.py", *SMALL, f"--output_dir={tmp_path}", "--resume_from_checkpoint"]
        second = warm.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert second.returncode != 0 and f"is in use by a running train.py (pid {first.pid}" in second.stderr, (
            second.stderr
        )
        assert len(second.stderr.strip().splitlines()) == 1
    finally:
        first.kill()
        first.wait()

    cmd = [sys.executable, "train.py", *SMALL, f"--output_dir={tmp_path}", "--max_steps=2"]
    out = warm.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "holds a run" in out.stderr and "--overwrite_output_dir" in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    run([f"--output_dir={tmp_path}", "--max_steps=2", "--overwrite_output_dir"])
    assert logged_steps(tmp_path) == [1, 2]
    cmd = [
        sys.executable,
        "train.py",
        *SMALL,
        f"--output_dir={tmp_path}",
        "--max_steps=2",
        "--resume_from_checkpoint",
        "--learning_rate=5e-4",
    ]
    out = warm.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "learning_rate=0.001 but this run has learning_rate=0.0005" in out.stderr, out.stderr


def test_nonfinite_updates_are_skipped_and_counted(tmp_path):
    run(
        [f"--output_dir={tmp_path}", "--max_steps=4", "--save_steps=1", "--save_total_limit=9"],
        faults=["nan_steps=(2,3)"],
    )
    rows = [json.loads(line) for line in open(f"{tmp_path}/log.jsonl")]
    assert [r["skipped"] for r in rows] == [0, 1, 1, 0]
    assert [r["nonfinite_total"] for r in rows] == [0, 1, 2, 2]
    # steps 2 and 3 never touched the weights: the step-3 state is the step-1 state
    assert_same(params(f"{tmp_path}/checkpoint-1"), params(f"{tmp_path}/checkpoint-3"), atol=0)
    step3, step4 = params(f"{tmp_path}/checkpoint-3"), params(f"{tmp_path}/checkpoint-4")
    assert not all(torch.equal(step3[k], step4[k]) for k in step3)  # step 4 is a real update
    assert all(torch.isfinite(v).all() for v in params(f"{tmp_path}/checkpoint-4").values())


def test_nonfinite_weights_after_a_step_are_never_saved(tmp_path):
    """An optimizer step that leaves a weight infinite stops the run in one line before that step is
    logged or checkpointed; the checkpoints before it stay the newest."""
    cmd = [
        sys.executable,
        "tests/faults.py",
        "inf_weights_at=3",
        "--",
        *SMALL,
        f"--output_dir={tmp_path}",
        "--max_steps=5",
        "--save_steps=1",
        "--save_total_limit=9",
    ]
    out = warm.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1")
    )
    assert out.returncode != 0 and "stopping at step 3: the weights are not finite" in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr and "checkpoint-2" in out.stderr.strip().splitlines()[-1]
    assert checkpoint.names(str(tmp_path)) == ["checkpoint-1", "checkpoint-2"] and logged_steps(tmp_path) == [1, 2]


def test_a_nonfinite_model_is_never_checkpointed(tmp_path):
    from plumbing.model import load

    model, _ = load("tiny")
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(SystemExit, match="not finite"):
        checkpoint.save(str(tmp_path), 1, model, opt, sched, {"model_name_or_path": "tiny"})
    assert checkpoint.names(str(tmp_path)) == []


def test_twenty_nonfinite_updates_in_a_row_stop_the_run(tmp_path):
    cmd = [
        sys.executable,
        "tests/faults.py",
        f"nan_steps={tuple(range(2, 31))}",
        "--",
        *SMALL,
        f"--output_dir={tmp_path}",
        "--max_steps=30",
        "--save_steps=1",
        "--save_total_limit=2",
    ]
    out = warm.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1")
    )
    assert out.returncode != 0 and "20 non-finite updates in a row" in out.stderr and "Traceback" not in out.stderr, (
        out.stderr[-2000:]
    )
    rows = [json.loads(line) for line in open(f"{tmp_path}/log.jsonl")]
    assert rows[-1]["step"] == 21 and rows[-1]["nonfinite_total"] == 20
    newest = checkpoint.newest(str(tmp_path))
    state = checkpoint.read(newest)
    assert state["step"] == 20  # the newest checkpoint is intact and holds the step-1 weights
    first = run([f"--output_dir={tmp_path}/one", "--max_steps=30", "--save_steps=1"], faults=["stop_after=1"])
    assert first.returncode == 0
    assert_same(params(f"{tmp_path}/one/checkpoint-1"), checkpoint.tensors(newest), atol=0)


BAD = [  # through the script: one line on stderr, no traceback, nothing heavy done
    (["--bogus=1"], "unknown key '--bogus'"),
    (["--num_generations=three"], "--num_generations='three' has type str"),
    (["--max_completion_length=20", "--block_length=8"], "block_length=8 must divide max_completion_length=20"),
    (["--target_range=(1000,2000)"], "only 0 distinct Countdown problems"),  # unreachable with 1..9: fails in seconds
    (["--model_name_or_path=tiny_block", "--block_length=4"], "block_length=4 must be the model's block size 8"),
]

# every impossible setting, and every numeric and list knob outside its range, stops before any heavy work: a
# range (the interval ending a key's comment) when the config is read, a combination in train.validate (in-process
# here; the script's one-line exit on a ConfigError is what BAD checks)
KNOBS = [
    (["--sampling_steps=7"], "steps=7 must be a positive multiple"),
    (["--mc_samples=9"], "--mc_samples=9 must be between 1 and 8, the most steps a rollout takes"),
    (["--unmasking=threshold", "--threshold=0"], "--threshold=0.0 must be in (0, 1]"),
    (["--unmasking=threshold", "--threshold=1.5"], "--threshold=1.5 must be in (0, 1]"),
    (["--threshold=0.5"], "--threshold=0.5 is read only by --unmasking=threshold (here 'low_confidence')"),
    (["--threshold=0.9"], "--threshold=0.9 is read only by --unmasking=threshold"),  # the default, given: refused
    (["--top_p=0"], "--top_p=0.0 must be in (0, 1]"),
    (["--top_p=1.5"], "--top_p=1.5 must be in (0, 1]"),
    (["--max_completion_length=0"], "--max_completion_length=0 must be in [1, inf)"),
    (["--block_length=0"], "--block_length=0 must be in [1, inf)"),
    (["--sampling_steps=0"], "--sampling_steps=0 must be in [1, inf)"),
    (["--mc_samples=0"], "--mc_samples=0 must be in [1, inf)"),
    (["--max_steps=-2"], "--max_steps=-2 must be in [-1, inf)"),
    # a model whose config declares its blocks: refused before it loads (these run no model)
    (["--model_name_or_path=tiny_block", "--block_length=4"], "block_length=4 must be the model's block size 8"),
    (["--model_name_or_path=models/tiny-countdown-block", "--block_length=4"], "must be the model's block size 8"),
    (["--unmasking=threshold", "--sampling_steps=7"], "steps=7 must be a positive multiple"),  # threshold's most steps
    (["--unmasking=threshold", "--mc_samples=9"], "--mc_samples=9 must be between 1 and 8"),
    (["--num_generations=1", "--per_device_train_batch_size=2"], "--num_generations=1 must be in [2, inf)"),
    (["--per_device_train_batch_size=6"], "--per_device_train_batch_size=6 must be a multiple of --num_generations=4"),
    (["--model_name_or_path=./no/model"], "no/model does not exist"),
    (["--train_file=/no/train.jsonl"], "--train_file=/no/train.jsonl does not exist"),
    (["--estimator=exactly"], "--estimator='exactly' must be one of"),
    (["--max_grad_norm=-1"], "--max_grad_norm=-1.0 must be in (0, inf)"),
    (["--epsilon=-1"], "--epsilon=-1.0 must be in (0, 1)"),
    (["--beta=-1.0"], "--beta=-1.0 must be in [0, inf)"),
    (["--save_steps=0"], "--save_steps=0 must be in [1, inf)"),
    (["--save_steps=-1"], "--save_steps=-1 must be in [1, inf)"),
    (["--learning_rate=-1"], "--learning_rate=-1.0 must be in (0, 1]"),
    (["--learning_rate=1e30"], "--learning_rate=1e+30 must be in (0, 1]"),
    (["--learning_rate=1e999"], "--learning_rate=inf must be a finite number"),
    (["--temperature=1e999"], "--temperature=inf must be a finite number"),
    (["--temperature=1e9"], "--temperature=1000000000.0 must be in [0, 100]"),
    (["--num_train_epochs=1e999"], "--num_train_epochs=inf must be a finite number"),
    (["--seed=99999999999999999999999"], "--seed=99999999999999999999999 must be in [0, 2**63)"),
    (["--threshold=1e999"], "--threshold=inf must be a finite number"),
    (["--eval_items=-2"], "--eval_items=-2 must be in [-1, inf)"),
    (["--lora_target_modules=('',)"], "--lora_target_modules=('',) must be a tuple of module names"),
    (["--num_range=(9,1)"], "--num_range=(9, 1) must be (low, high)"),
]


@pytest.mark.parametrize("args, words", KNOBS)
def test_every_knob_has_a_range(args, words):
    from types import SimpleNamespace

    import train
    from plumbing import data
    from plumbing.configurator import configure
    from plumbing.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        argv = [*SMALL, *args]
        cfg = SimpleNamespace(
            **configure(os.path.join(ROOT, "train.py"), argv, data.option_files(), train.RANGES, train.CHOICES)
        )
        train.validate(cfg, argv)
    assert words in str(e.value)


@pytest.mark.parametrize("script", ["train.py", "eval.py"])
def test_every_numeric_key_has_a_range_and_help_shows_it(script):
    """Each numeric key (an int or float default) of train.py, its task options, and eval.py has an interval in
    the script's RANGES (a task option: ending its comment, configurator.option_ranges), and --help prints it on
    the key's line."""
    import eval as evaluate
    import train
    from plumbing import data
    from plumbing.configurator import declared, option_ranges

    ranges = dict({"train.py": train.RANGES, "eval.py": evaluate.RANGES}[script])
    keys = declared(os.path.join(ROOT, script))
    for path in data.option_files():
        keys |= declared(path)
        ranges |= option_ranges(path)
    numeric = {k for k, (default, *_) in keys.items() if type(default) in (int, float)}
    assert numeric and numeric <= set(ranges), sorted(numeric - set(ranges))
    out = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    lines = {line.split()[0]: line for line in out.stdout.splitlines() if line.startswith("  --")}
    for key in numeric:
        assert lines[f"--{key}"].endswith(ranges[key]), lines[f"--{key}"]


def test_a_task_option_is_held_to_the_range_ending_its_comment(capsys):
    """The template's generator option, as a copied task declares it: a value outside [1, 6] stops in one line,
    and --help shows the range once."""
    import train
    from plumbing.configurator import configure
    from plumbing.errors import ConfigError

    template, script = os.path.join(ROOT, "tasks", "_template.py"), os.path.join(ROOT, "train.py")
    assert configure(script, ["--template_digits=6"], [template], train.RANGES)["template_digits"] == 6
    with pytest.raises(ConfigError, match=r"--template_digits=7 must be in \[1, 6\]"):
        configure(script, ["--template_digits=7"], [template], train.RANGES)
    with pytest.raises(SystemExit):
        configure(script, ["--help"], [template], train.RANGES)
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("  --template_digits"))
    assert line.endswith("[1, 6]") and line.count("[1, 6]") == 1


def test_a_threshold_at_its_default_without_threshold_unmasking_passes():
    """The refusal above reads the command line: a preset's or the default τ with fixed-step unmasking is not
    given by the user, and passes."""
    from types import SimpleNamespace

    import train
    from plumbing import data
    from plumbing.configurator import configure

    cfg = SimpleNamespace(
        **configure(os.path.join(ROOT, "train.py"), SMALL, data.option_files(), train.RANGES, train.CHOICES)
    )
    train.validate(cfg, SMALL)


@pytest.mark.parametrize("args, words", BAD)
def test_bad_config_stops_train_with_one_line(tmp_path, args, words):
    cmd = [sys.executable, "train.py", *SMALL, f"--output_dir={tmp_path}", *args]
    out = warm.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)  # idle: 5-10 s
    assert out.returncode != 0 and words in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not any(
        f == "log.jsonl" or f.startswith("checkpoint") for f in os.listdir(tmp_path)
    )  # stopped before any step


def test_a_cold_start_stops_with_one_line():
    """The one-line stop as a user meets it, from a fresh interpreter: a warning printed while torch,
    transformers or peft import would show here (the suite's other script runs start warm, tests/warm.py)."""
    for script in ("train.py", "eval.py", "tools/sft.py"):
        out = subprocess.run([sys.executable, script, "--bogus=1"], cwd=ROOT, capture_output=True, text=True)
        assert out.returncode == 1 and out.stderr.splitlines() == [
            "config error: unknown key '--bogus'; --help lists them"
        ], (script, out.stderr[-2000:])


def test_checkpoint_of_another_model_is_refused_before_any_copy(tmp_path):
    from plumbing.model import load

    trained, _ = load("tiny", seed=1)
    opt = torch.optim.AdamW(trained.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    path = checkpoint.save(str(tmp_path), 1, trained, opt, sched, {"model_name_or_path": "tiny"})
    other, _ = load("tiny", tiny_overrides=dict(d_ff=256))
    before = {n: p.clone() for n, p in other.named_parameters()}
    with pytest.raises(SystemExit, match="different model"):
        restore.restore(path, checkpoint.read(path), other)
    assert all(torch.equal(before[n], p) for n, p in other.named_parameters())


def test_a_resume_compares_paths_as_files_the_data_by_its_items_and_names_a_changed_key(tmp_path):
    """A path in the config is the same setting however spelled (./models/x, models/x, a link); a training file
    moved with the same items resumes (its items' digest is compared, not its path), other items do not; a
    changed --seed is named as the key, not as the training items it changes."""
    from plumbing.model import load

    model = load("tiny")[0]
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text("{}\n")
    os.symlink(os.path.join(ROOT, "models/tiny-countdown"), tmp_path / "link")
    config = {"model_name_or_path": "models/tiny-countdown", "train_file": f"{tmp_path}/data/train.jsonl", "seed": 0}
    path = checkpoint.save(str(tmp_path / "run"), 1, model, opt, sched, config, items=("abc", "def"))

    def resume(train_items="abc", **changed):
        now = config | changed
        return restore.restore(path, checkpoint.read(path), model, opt, sched, now, set(now), train_items=train_items)

    with contextlib.chdir(ROOT):
        assert resume(model_name_or_path="./models/tiny-countdown") == 1
        assert resume(model_name_or_path=f"{ROOT}/models/tiny-countdown/") == 1
        assert resume(model_name_or_path=str(tmp_path / "link")) == 1
        assert resume(train_file=f"{tmp_path}/moved/train.jsonl") == 1
        with pytest.raises(SystemExit, match="other training items than --train_file="):
            resume(train_file=f"{tmp_path}/moved/train.jsonl", train_items="xyz")
        with pytest.raises(SystemExit, match=re.escape("has train_file=")):  # items unknown: the path decides
            resume(train_file=f"{tmp_path}/moved/train.jsonl", train_items=None)
        with pytest.raises(SystemExit, match=re.escape("has seed=0 but this run has seed=1: resume with --seed=0")):
            resume(seed=1, train_items="xyz")
        with pytest.raises(SystemExit, match="has model_name_or_path="):
            resume(model_name_or_path="models/tiny-countdown-block")


def test_adapters_on_a_base_whose_weights_changed_are_refused(tmp_path):
    """A LoRA checkpoint records a digest of its base's weights: rebuilt (eval.py, export.py) or resumed on a
    base whose weights changed under the same name, it stops in one line before any copy; the same weights
    saved in bf16 load. Full fine-tuning holds every weight and records none."""
    from plumbing.model import add_lora, load, save

    base = f"{tmp_path}/base"
    save(*load("tiny", seed=0), base)
    model = add_lora(load(base)[0], 4, 8)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    config = {"model_name_or_path": base, "lora_r": 4, "lora_alpha": 8, "lora_target_modules": list(LORA)}
    ckpt = checkpoint.save(f"{tmp_path}/run", 1, model, opt, sched, config, base=base)
    assert restore.load_trained(ckpt, base=base)[2] == config
    as_bf16, tok = load(base, dtype=torch.bfloat16)
    save(as_bf16, tok, f"{tmp_path}/base_bf16")
    restore.load_trained(ckpt, base=f"{tmp_path}/base_bf16")
    save(*load("tiny", seed=1), base)  # the same name, other weights
    with pytest.raises(SystemExit, match=f"other base weights than those loaded now: the base model {base}"):
        restore.load_trained(ckpt, base=base)
    resumed = add_lora(load(base)[0], 4, 8)
    before = {n: p.clone() for n, p in resumed.named_parameters()}
    with pytest.raises(SystemExit, match="other base weights"):
        restore.restore(ckpt, checkpoint.read(ckpt), resumed, opt, sched)
    assert all(torch.equal(before[n], p) for n, p in resumed.named_parameters())
    full = checkpoint.save(f"{tmp_path}/full", 1, *load("tiny")[:1], opt, sched, {"model_name_or_path": "tiny"})
    assert checkpoint.read(full)["base_weights"] is None


def test_a_resume_checks_the_training_items_and_reuses_the_accuracy_before(tmp_path):
    """A checkpoint records digests of the run's training and held-out items and the held-out accuracy
    before training. Resumed, train.py reuses that accuracy (final.json as the uninterrupted run's), measures
    it again when the held-out items changed, and, after its --train_file was edited, stops in one line
    naming the file."""
    from tasks import countdown

    lines = [json.dumps(item) + "\n" for item in countdown.generate(32, seed=0, split="train")]
    open(f"{tmp_path}/train.jsonl", "w").writelines(lines)
    args = [f"--train_file={tmp_path}/train.jsonl", f"--output_dir={tmp_path}/run", "--save_steps=1", "--max_steps=2"]
    first = run([*args, "--eval_items=4"])
    final = json.load(open(f"{tmp_path}/run/final.json"))
    scores = checkpoint.read(f"{tmp_path}/run/checkpoint-1")["accuracy_before"]  # one per held-out item
    assert len(scores) == 4 and sum(scores) / 4 == final["accuracy_before"] and final["change_se"] >= 0
    points = 100 * (final["accuracy_after"] - final["accuracy_before"])
    change = f"{points:+.1f} ± {100 * final['change_se']:.1f} points"
    assert change in first.stdout, first.stdout[-2000:]
    resume = [*args, f"--resume_from_checkpoint={tmp_path}/run/checkpoint-1"]
    out = run([*resume, "--eval_items=4"])
    recorded = f"held-out accuracy before AGRPO: {final['accuracy_before']:.3f} (measured at the start of the run"
    assert recorded in out.stdout and json.load(open(f"{tmp_path}/run/final.json")) == final
    out = run([*resume, "--eval_items=3"])
    assert "(measured at the start" not in out.stdout and "before AGRPO: " in out.stdout
    assert json.load(open(f"{tmp_path}/run/final.json"))["eval_items"] == 3
    open(f"{tmp_path}/train.jsonl", "w").writelines(lines[1:])
    cmd = [sys.executable, "train.py", *SMALL, *resume, "--eval_items=4"]
    out = warm.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1")
    )
    assert out.returncode != 0 and out.stderr.strip().splitlines() == [
        f"config error: {tmp_path}/run/checkpoint-1 was trained on other training items than "
        f"--train_file={tmp_path}/train.jsonl gives now: resume with the data it was trained on, or start over "
        "with --overwrite_output_dir"
    ], out.stderr[-2000:]


class RunsCode:
    """Unpickling this object would run a command: the attack a pickled checkpoint allows."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_crafted_to_run_code_is_never_unpickled(tmp_path):
    """A checkpoint someone sends you: its optimizer.pt is a pickle that runs a command when loaded.
    The resume refuses it (torch.load with weights_only) and the command never runs."""
    run([f"--output_dir={tmp_path}/r", "--max_steps=2", "--save_steps=1"])
    marker = tmp_path / "owned"
    torch.save({"optimizer": RunsCode(marker)}, f"{tmp_path}/r/checkpoint-2/optimizer.pt")
    rechecksum(f"{tmp_path}/r/checkpoint-2")  # its checksums match: only the unpickling rule stands in the way
    with pytest.raises(SystemExit, match="cannot be read"):
        checkpoint.trainer_tensors(f"{tmp_path}/r/checkpoint-2")
    assert not marker.exists()
    out = run([f"--output_dir={tmp_path}/r", "--max_steps=2", "--save_steps=1", "--resume_from_checkpoint"])
    assert "checkpoint-2 cannot be read" in out.stderr + out.stdout and "resumed from" in out.stderr + out.stdout
    assert not marker.exists()


def test_all_eos_and_empty_completions_give_a_finite_update():
    from agrpo import MicroBatch, accumulate_gradients, prepare
    from plumbing.model import load
    from sample import Rollout

    model, tok = load("tiny")
    eos = tok.eos_token_id
    comp = torch.tensor([[40, 41, 42, 43, eos, eos, eos, eos], [eos] * 8])  # row 1: empty text, all EOS
    ids = torch.cat([torch.full((2, 4), 50), comp], 1)
    steps = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3], [0, 1, 2, 3, 0, 1, 2, 3]]) + torch.tensor([0, 0, 0, 0, 4, 4, 4, 4])
    r = Rollout(
        ids, torch.ones_like(ids), 4, steps, torch.full((2, 8), -1.0), torch.zeros(2, 8), 8, tok.mask_token_id, (eos,)
    )
    draws, old, _ = prepare(model, r, estimator="stepwise", k=2, mu=1, generator=torch.Generator().manual_seed(0))
    adv = torch.tensor([1.0, -1.0])
    batch = MicroBatch(
        r, ["", ""], torch.zeros(2), torch.zeros(2), torch.zeros(2), adv, torch.arange(2), draws, old, None
    )
    loss, _ = accumulate_gradients(model, [batch], 0, epsilon=0.2, epsilon_high=0.2, beta=0.0)
    assert math.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert tok.decode(comp[1].tolist(), skip_special_tokens=True) == ""


def lora_run(tmp_path, steps=(1, 2), keep=3):
    """A LoRA model with a checkpoint at each of `steps` (adapters moved in between), as train.py saves them."""
    from plumbing.model import add_lora, load

    model, _ = load("tiny", seed=0)
    model = add_lora(model, 4, 8)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    for p in model.parameters():  # one step on zero gradients: moments for every parameter, no weight moved
        p.grad = torch.zeros_like(p) if p.requires_grad else None
    opt.step()
    for step in steps:
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(0.01 * step)
        checkpoint.save(
            str(tmp_path),
            step,
            model,
            opt,
            sched,
            {"model_name_or_path": "tiny", "lora_r": 4, "lora_alpha": 8, "lora_target_modules": list(LORA)},
            keep=keep,
        )
    return model, opt, sched


LORA = ("q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out")


def rechecksum(path):
    """Record the files' checksums as they are now: a checkpoint written damaged, not damaged after."""
    digests = {f: manifest.sha256(f"{path}/{f}") for f in os.listdir(path) if f != checkpoint.CHECKSUMS}
    json.dump(digests, open(f"{path}/{checkpoint.CHECKSUMS}", "w"))


def flip_byte(file, where=0.5):
    data = bytearray(open(file, "rb").read())
    data[int(where * (len(data) - 1))] ^= 0x10
    open(file, "wb").write(bytes(data))


def damage(path, how):
    """A checkpoint damaged after it was written (a flipped byte: its checksum differs) or written damaged
    (its checksums are those of the damaged files: the structural checks must catch it)."""
    from safetensors.torch import save_file

    adapters = f"{path}/adapter_model.safetensors"
    if how.startswith("a byte flipped in "):
        flip_byte(f"{path}/{how.removeprefix('a byte flipped in ')}")
        return
    if how.startswith("optimizer"):
        extra = torch.load(f"{path}/optimizer.pt", weights_only=True)
        state = extra["optimizer"]["state"]
        if how == "optimizer state missing a parameter":
            del state[3]
        elif how == "optimizer exp_avg of another shape":
            state[2]["exp_avg"] = torch.zeros(3)
        elif how == "optimizer exp_avg_sq not finite":
            state[1]["exp_avg_sq"][0] = float("nan")
        elif how == "optimizer scheduler last_epoch a string":
            extra["scheduler"]["last_epoch"] = "1"
        torch.save(extra, f"{path}/optimizer.pt")
    elif how == "adapters deleted":
        os.remove(adapters)
    elif how == "adapters empty":
        save_file({}, adapters)
    elif how == "adapters of shape (1,)":
        save_file({k: torch.ones(1) for k in checkpoint.tensors(path)}, adapters)
    else:
        state = json.load(open(f"{path}/trainer_state.json"))
        if how == "step is a string":
            state["step"] = str(state["step"])
        elif how == "no python_rng":
            del state["python_rng"]
        json.dump(state, open(f"{path}/trainer_state.json", "w"))
    rechecksum(path)


DAMAGES = ["adapters deleted", "adapters empty", "adapters of shape (1,)", "step is a string", "no python_rng"]
DAMAGES += [f"a byte flipped in {f}" for f in ("adapter_model.safetensors", "optimizer.pt", "trainer_state.json")]
DAMAGES += [
    "optimizer state missing a parameter",
    "optimizer exp_avg of another shape",
    "optimizer exp_avg_sq not finite",
    "optimizer scheduler last_epoch a string",
]


@pytest.mark.parametrize("how", DAMAGES)
def test_a_damaged_checkpoint_is_never_used(tmp_path, how):
    """A checkpoint is used only whole: every adapter with its shape, every state field of its type.
    Otherwise a resume takes the next older good one with a warning, and eval/export refuse it."""
    model, opt, sched = lora_run(tmp_path)
    good = {n: p.clone() for n, p in model.named_parameters() if p.requires_grad}
    damage(f"{tmp_path}/checkpoint-2", how)
    if "adapters" in how:
        with pytest.raises(SystemExit, match="incomplete|has shape"):
            restore.load_trained(f"{tmp_path}/checkpoint-2")
    if how.startswith("a byte flipped"):  # eval.py and export.py refuse it in one line
        with pytest.raises(SystemExit, match=f"checkpoint-2: {how.removeprefix('a byte flipped in ')} is damaged"):
            restore.load_trained(f"{tmp_path}/checkpoint-2")
    warnings = []
    step, _ = restore.resume(str(tmp_path), model, opt, sched, {}, (), (f"{tmp_path}/log.jsonl",), log=warnings.append)
    assert step == 1 and "checkpoint-2" in warnings[0] and "trying an older checkpoint" in warnings[0]
    assert all(torch.allclose(p, good[n] - 0.02) for n, p in model.named_parameters() if p.requires_grad)


def test_no_fresh_start_over_damaged_checkpoints(tmp_path):
    """When every checkpoint is damaged the resume stops, naming the way out; nothing is emptied."""
    model, opt, sched = lora_run(tmp_path)
    for step in (1, 2):
        damage(f"{tmp_path}/checkpoint-{step}", "adapters deleted")
    with open(f"{tmp_path}/log.jsonl", "w") as f:
        f.write('{"step": 1}\n{"step": 2}\n')
    with pytest.raises(SystemExit, match="none of the 2 checkpoints .* can be used"):
        restore.resume(str(tmp_path), model, opt, sched, {}, (), (f"{tmp_path}/log.jsonl",), log=lambda *a: None)
    assert (
        checkpoint.names(str(tmp_path)) == ["checkpoint-1", "checkpoint-2"]
        and len(open(f"{tmp_path}/log.jsonl").readlines()) == 2
    )


def test_a_new_checkpoint_is_never_deleted_for_an_unreadable_later_one(tmp_path):
    os.makedirs(f"{tmp_path}/checkpoint-999")  # unreadable: no files
    lora_run(tmp_path, steps=(1, 2, 3), keep=1)
    assert checkpoint.names(str(tmp_path)) == ["checkpoint-3", "checkpoint-999"]


def test_a_checkpoint_cannot_name_code_to_run(tmp_path):
    """A trainer_state.json whose base is a local folder with its own modeling code (auto_map): eval.py
    and export.py refuse it in one line saying how to trust it, and the code never runs; named by
    the user with --base_model it loads."""
    from plumbing.model import load, save

    model, tok = load("tiny")
    save(model, tok, f"{tmp_path}/base")
    marker = tmp_path / "owned"
    with open(f"{tmp_path}/base/tiny_llada.py", "a") as f:
        f.write(f"\nimport pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    ckpt = checkpoint.save(
        f"{tmp_path}/run", 1, model, opt, sched, {"model_name_or_path": "tiny", "lora_r": 0}, base=f"{tmp_path}/base"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for cmd in (
        ["eval.py", f"--models=('{ckpt}',)", "--labels=()", "--eval_items=2", f"--output_dir={tmp_path}/e"],
        ["tools/export.py", ckpt, f"{tmp_path}/export"],
    ):
        out = warm.run([sys.executable, *cmd], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
        assert (
            out.returncode != 0 and f"--base_model={tmp_path}/base" in out.stderr and "Traceback" not in out.stderr
        ), out.stderr
        assert len(out.stderr.strip().splitlines()) == 1 and not marker.exists()
    out = warm.run(
        [sys.executable, "tools/export.py", ckpt, f"{tmp_path}/export", f"--base_model={tmp_path}/base"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert out.returncode == 0 and marker.exists(), out.stderr[-2000:]


def test_a_checkpoint_cannot_name_a_hub_repository_to_run(tmp_path):
    """A checkpoint naming a hub id that is no family's released model as its base is refused in one line
    saying how to trust it, before anything is fetched or run; a family's released ids and the shipped
    models are trusted."""
    from plumbing.model import load
    from plumbing.model_names import is_shipped_or_official

    model, _ = load("tiny")
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    ckpt = checkpoint.save(
        f"{tmp_path}/run", 1, model, opt, sched, {"model_name_or_path": "tiny", "lora_r": 0}, base="someone/a-fork"
    )
    with pytest.raises(SystemExit, match="a hub id that is not a family's released model.*--base_model=someone/a-fork"):
        restore.load_trained(ckpt)
    assert is_shipped_or_official("GSAI-ML/LLaDA-8B-Instruct") and is_shipped_or_official("JetLM/SDAR-8B-Chat")
    assert is_shipped_or_official("models/tiny-countdown") and not is_shipped_or_official("someone/a-fork")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_and_sigterm_save_the_last_finished_step(tmp_path, uninterrupted, signum):
    """Ctrl-C or a cluster's SIGTERM mid-run: a checkpoint of the last finished step is written (none
    was due), the run ends with one line naming it, and the resume finishes bit for bit."""
    cmd = [sys.executable, "train.py", *SMALL, f"--output_dir={tmp_path}", *FAST, "--save_steps=100"]
    proc = warm.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    deadline = time.time() + 300
    while time.time() < deadline and not (os.path.exists(f"{tmp_path}/log.jsonl") and len(logged_steps(tmp_path)) >= 3):
        time.sleep(0.05)
    proc.send_signal(signum)
    err = proc.communicate(timeout=300)[1]
    last = err.strip().splitlines()[-1]
    done = logged_steps(tmp_path)[-1]
    assert proc.returncode != 0 and "Traceback" not in err, err[-2000:]
    assert (
        last == f"stopped by {signal.Signals(signum).name} after step {done}: checkpoint {tmp_path}/checkpoint-{done}: "
        "continue "
        "with --resume_from_checkpoint"
    ), last
    assert 3 <= done < 10 and checkpoint.names(str(tmp_path)) == [f"checkpoint-{done}"]
    run([f"--output_dir={tmp_path}", *FAST, "--resume_from_checkpoint"])
    assert_same(uninterrupted, params(f"{tmp_path}/checkpoint-10"), atol=0)


def one_line(cmd, env=None):
    out = warm.run([sys.executable, *cmd], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr[-2000:]
    return out.stderr.strip().splitlines()[-1]


def test_a_preset_that_exits_is_said_in_one_line(tmp_path):
    """A preset calling sys.exit(0) ended the script silently with status 0: it is named, with its line."""
    (tmp_path / "preset.py").write_text("import sys\nlearning_rate = 1e-4\nsys.exit(0)\n")
    assert one_line(["train.py", f"{tmp_path}/preset.py"]) == (
        f"config error: config file {tmp_path}/preset.py, line 3: exited (sys.exit(0)) while being read: "
        "a preset only sets values"
    )


def test_broken_inputs_end_in_one_line(tmp_path):
    """What used to end in a traceback: a preset that does not run, LoRA targets that match nothing, a
    damaged weights or tokenizer file, a log that cannot be appended, results with nowhere to go."""
    (tmp_path / "preset.py").write_text("learning_rate = 1e-4\nlora_r = (\n")
    assert (
        one_line(["train.py", f"{tmp_path}/preset.py"]) == f"config error: config file {tmp_path}/preset.py, line 2: "
        "SyntaxError: '(' was never closed"
    )
    (tmp_path / "names.py").write_text("learning_rate = lr_from_elsewhere\n")
    assert "names.py, line 1: NameError" in one_line(["train.py", f"{tmp_path}/names.py"])
    args = [*SMALL, "--max_steps=1", "--eval_items=0"]
    assert "--lora_target_modules=('nothing',): Target modules {'nothing'} not found" in one_line(
        ["train.py", *args, "--lora_r=4", "--lora_target_modules=('nothing',)", f"--output_dir={tmp_path}/a"]
    )
    for name, damaged in (("model.safetensors", b"\x10\x00"), ("tokenizer.json", b'{"version": ')):
        shutil.copytree(os.path.join(ROOT, "models/tiny-countdown"), tmp_path / name)
        (tmp_path / name / name).write_bytes(damaged)
        assert f"cannot load model '{tmp_path}/{name}'" in one_line(
            ["train.py", *args, f"--model_name_or_path={tmp_path}/{name}", f"--output_dir={tmp_path}/{name}-run"]
        )
    (tmp_path / "a_file").write_text("")
    assert "cannot hold the results (it is a file)" in one_line(
        ["eval.py", "--models=('tiny',)", "--labels=()", f"--output_dir={tmp_path}/a_file"]
    )
    assert "cannot hold the run" in one_line(["train.py", *args, f"--output_dir={tmp_path}/a_file"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB")} | {
        "HOME": str(tmp_path),
        "WANDB_MODE": "online",
    }
    assert one_line(["train.py", *args, "--report_to=wandb", f"--output_dir={tmp_path}/w"], env).startswith(
        "--report_to=wandb: "
    )
    from plumbing import logs

    with pytest.raises(SystemExit, match="cannot write .*log.jsonl"):
        logs.append_jsonl(f"{tmp_path}/no_such_folder/log.jsonl", [{"step": 1}])


def test_hostile_data_lines_are_named(tmp_path):
    """A JSONL line with a 4,400-digit number, 100,000 nested brackets or a lone surrogate, and a Countdown
    row whose numbers hold a word, each end in one line naming the file and line."""
    from plumbing import data

    good = json.dumps({"nums": [3, 5, 7], "target": 22})
    bad = {
        "digits": '{"nums": [3, 5, 7], "target": ' + "9" * 4400 + "}",
        "depth": "[" * 100_000 + "]" * 100_000,
        "surrogate": '{"nums": [3, 5, 7], "target": 22, "note": "\\ud800"}',
        "nan": json.dumps({"nums": "3 nan 5 7", "target": 22}),
    }
    for name, line in bad.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_text(f"{good}\n{line}\n")
        with pytest.raises(data.DataError, match=f"{name}.jsonl:2: "):
            data.load_items("countdown", "train", str(path))


def test_eval_and_export_failures_end_in_one_line(tmp_path):
    """eval.py on a model it cannot load or with a block length the model refuses, export.py into a path it
    cannot write or of a run that recorded no lora_r: one line each (the last one exports)."""
    shutil.copytree(os.path.join(ROOT, "models/tiny-countdown"), tmp_path / "damaged")
    (tmp_path / "damaged" / "model.safetensors").write_bytes(b"\x10\x00")
    args = ["eval.py", "--labels=()", "--eval_items=2", f"--output_dir={tmp_path}/e"]
    assert "--models: cannot load model" in one_line([*args, f"--models=('{tmp_path}/damaged',)"])
    assert "block_length=4 must be the model's block size 8" in one_line(
        [*args, "--models=('models/tiny-countdown-block',)", "--block_length=4", "--max_completion_length=(16,)"]
    )
    model, opt, sched = lora_run(tmp_path / "run", steps=(1,))
    (tmp_path / "a_file").write_text("")
    assert "cannot write the export to" in one_line(["tools/export.py", f"{tmp_path}/run", f"{tmp_path}/a_file/out"])
    state = json.load(open(f"{tmp_path}/run/checkpoint-1/trainer_state.json"))
    for key in ("lora_r", "lora_alpha", "lora_target_modules"):
        del state["config"][key]
    json.dump(state, open(f"{tmp_path}/run/checkpoint-1/trainer_state.json", "w"))
    rechecksum(f"{tmp_path}/run/checkpoint-1")
    out = warm.run(
        [sys.executable, "tools/export.py", f"{tmp_path}/run", f"{tmp_path}/out"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) <= 1, out.stderr[-2000:]


def test_the_checkpoint_footprint_is_stated_and_a_run_it_cannot_fit_stops(tmp_path, monkeypatch):
    """Before training: one line with a checkpoint's size (trained tensors and AdamW's two moments), how many
    are kept and the free disk; a warning when they cannot all fit, a one-line stop when not even one can."""
    from types import SimpleNamespace

    from plumbing import lifecycle
    from plumbing.errors import ConfigError

    model = torch.nn.Sequential(torch.nn.Linear(1024, 1024, bias=False), torch.nn.Linear(1024, 1024, bias=False))
    model[1].requires_grad_(False)  # frozen (a LoRA base): not in a checkpoint
    cfg = SimpleNamespace(output_dir=str(tmp_path), save_steps=2, save_total_limit=3, fsdp=False)
    cfg.collective_timeout_minutes = 30  # covers a 12 MB save: no line about it
    run = SimpleNamespace(world=1)
    for free_mib, words in [(1000, None), (30, "warning: "), (10, "not even one checkpoint fits")]:
        monkeypatch.setattr(lifecycle.shutil, "disk_usage", lambda path, n=free_mib: SimpleNamespace(free=n * 2**20))
        stated = f"checkpoints: ~0.0117 GiB each × 3 kept = 0.0352 GiB; {free_mib / 1024:.3g} GiB free on {tmp_path}"
        if words == "not even one checkpoint fits":
            with pytest.raises(ConfigError, match=words):
                lifecycle.disk_footprint(cfg, run, model, 0, 10)
            continue
        line = lifecycle.disk_footprint(cfg, run, model, 0, 10)  # 5 saves, 3 kept (4 while the next is written)
        assert stated in line and line.startswith(words or "checkpoints: "), line
    # a resume one save before the end, 3 checkpoints on disk: the next save needs room for one more only
    for step in (2, 4, 6):
        os.makedirs(tmp_path / f"checkpoint-{step}")
    monkeypatch.setattr(lifecycle.shutil, "disk_usage", lambda path: SimpleNamespace(free=30 * 2**20))
    assert not lifecycle.disk_footprint(cfg, run, model, 8, 10).startswith("warning")


def test_the_collective_timeout_covers_a_checkpoint(monkeypatch):
    """train.py's process group waits collective_timeout_minutes (default 30, over NCCL's 10) for a slow rank."""
    import datetime

    import train
    from plumbing import ddp

    seen = {}
    monkeypatch.setattr(ddp.dist, "init_process_group", lambda backend, **kw: seen.update(kw))
    monkeypatch.setattr(ddp.dist, "get_rank", lambda: 0)
    monkeypatch.setattr(ddp.dist, "get_world_size", lambda: 2)
    monkeypatch.setenv("WORLD_SIZE", "2")
    ddp.init_processes(timeout_minutes=train.collective_timeout_minutes)
    assert train.collective_timeout_minutes == 30 and seen["timeout"] == datetime.timedelta(minutes=30)


def test_a_full_disk_in_a_sharded_save_stops_with_one_line(tmp_path, monkeypatch):
    """DCP reports a rank's failed write as CheckpointException (not an OSError): a full disk there stops the run
    with the one line of any full disk, and the half-written folder is gone."""
    import errno

    import torch.distributed.checkpoint.filesystem as dcp_files
    from torch.distributed.checkpoint.api import CheckpointException

    from plumbing import optim

    model = torch.nn.Linear(64, 64)
    opt, sched = optim.make_optimizer(1e-3, list(model.parameters()), 10)
    seen = []

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    real_full = checkpoint.disk_full
    monkeypatch.setattr(checkpoint, "disk_full", lambda e, out: seen.append(type(e)) or real_full(e, out))
    monkeypatch.setattr(dcp_files, "_write_item", full)
    with pytest.raises(SystemExit, match=f"the disk of {tmp_path} is full: checkpoint 2 not written"):
        checkpoint.save(str(tmp_path), 2, model, opt, sched, {"model_name_or_path": "tiny"}, sharded=True)
        checkpoint.finish()  # the shards are written in the background: their failure comes when it is waited for
    assert seen[0] is CheckpointException and os.listdir(tmp_path) == []
