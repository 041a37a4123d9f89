"""train.py end to end on the embedded model: DDP equals one process, resume equals no stop."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys

import pytest
import torch
import warm

from plumbing import checkpoint
from plumbing.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = [
    "--num_generations=4",
    "--per_device_train_batch_size=4",
    "--max_completion_length=16",
    "--sampling_steps=8",
    "--mc_samples=2",
    "--eval_items=0",
    "--learning_rate=1e-3",
]


def run(args, nproc=1, env=None, faults=()):
    """train.py with SMALL and args; faults ("stop_after=2", ...) run it through tests/faults.py."""
    cmd = [sys.executable, "train.py", *SMALL, *args]
    if faults:
        cmd = [sys.executable, "tests/faults.py", *faults, "--", *SMALL, *args]
    if nproc > 1:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(nproc),
            "--standalone",  # a free port: tests may run side by side
            "train.py",
            *SMALL,
            *args,
        ]
    e = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    out = warm.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=e)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def params(path):
    return checkpoint.tensors(path)


def assert_same(a, b, atol):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)


def test_ddp_two_ranks_equal_one_process(tmp_path):
    """2 gloo ranks × 1 micro-batch each == 1 process × 2 accumulated micro-batches."""
    run([f"--output_dir={tmp_path}/one", "--max_steps=2", "--gradient_accumulation_steps=2"])
    run([f"--output_dir={tmp_path}/ddp", "--max_steps=2", "--gradient_accumulation_steps=1"], nproc=2)
    one, ddp = params(f"{tmp_path}/one/checkpoint-2"), params(f"{tmp_path}/ddp/checkpoint-2")
    assert_same(one, ddp, atol=1e-5)
    init = params(f"{tmp_path}/one/checkpoint-2")  # sanity: training moved the weights
    assert any((v != 0).any() for v in init.values())


def test_two_nodes_train_and_resume_as_two_ranks_of_one_node(tmp_path):
    """Two torchrun launchers, one process each, meet by c10d rendezvous on 127.0.0.1 (--nnodes=2, as two
    machines would): both end with status 0 and write bit for bit the weights of a 2-rank run of one
    launcher (the same ranks and order of sums); its last checkpoint removed, the run resumed by two
    launchers again redoes that step to the same weights."""
    run([f"--output_dir={tmp_path}/one_node", "--max_steps=2", "--save_steps=1"], nproc=2)
    with socket.socket() as s:  # a free port for the rendezvous store
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def two_nodes(rdzv_id, *args):
        launchers = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "torch.distributed.run",
                    "--nnodes=2",
                    "--nproc_per_node=1",
                    "--rdzv_backend=c10d",
                    f"--rdzv_endpoint=127.0.0.1:{port}",
                    f"--rdzv_id={rdzv_id}",
                    f"--rdzv_conf=is_host={int(node == 0)}",
                    "--local_addr=127.0.0.1",
                    "--max_restarts=0",
                    "train.py",
                    *SMALL,
                    f"--output_dir={tmp_path}/two_nodes",
                    "--max_steps=2",
                    "--save_steps=1",
                    *args,
                ],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            for node in range(2)
        ]
        outs = [p.communicate(timeout=300) for p in launchers]
        assert [p.returncode for p in launchers] == [0, 0], "\n".join(err[-2000:] for _, err in outs)
        return "".join(out + err for out, err in outs)

    one_node = params(f"{tmp_path}/one_node/checkpoint-2")
    two_nodes("first")
    assert_same(one_node, params(f"{tmp_path}/two_nodes/checkpoint-2"), atol=0)
    shutil.rmtree(f"{tmp_path}/two_nodes/checkpoint-2")
    out = two_nodes("resumed", "--resume_from_checkpoint")
    assert f"resumed from {tmp_path}/two_nodes/checkpoint-1 (step 1)" in out, out[-2000:]
    assert_same(one_node, params(f"{tmp_path}/two_nodes/checkpoint-2"), atol=0)


def test_a_warm_run_equals_a_cold_one(tmp_path):
    """The suite's script runs fork from a process that imported everything once (tests/warm.py): the same
    run from a fresh interpreter writes the same weights and log, so what the suite sees is what a user gets."""
    args = [*SMALL, "--max_steps=2", "--eval_items=8"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cold = subprocess.run(
        [sys.executable, "train.py", *args, f"--output_dir={tmp_path}/cold"], cwd=ROOT, capture_output=True, env=env
    )
    warm_run = run([f"--output_dir={tmp_path}/warm", "--max_steps=2", "--eval_items=8"])
    assert cold.returncode == 0 == warm_run.returncode, cold.stderr[-2000:]
    assert_same(params(f"{tmp_path}/cold/checkpoint-2"), params(f"{tmp_path}/warm/checkpoint-2"), atol=0)
    logs = [[{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in open(f"{tmp_path}/{w}/log.jsonl")]
            for w in ("cold", "warm")]  # fmt: skip
    assert logs[0] == logs[1] and json.load(open(f"{tmp_path}/cold/final.json")) == json.load(
        open(f"{tmp_path}/warm/final.json")
    )


def test_resume_reaches_the_uninterrupted_state(tmp_path):
    run([f"--output_dir={tmp_path}/full", "--max_steps=4", "--save_steps=2"])
    run([f"--output_dir={tmp_path}/cut", "--max_steps=4", "--save_steps=2"], faults=["stop_after=2"])
    assert sorted(f for f in os.listdir(f"{tmp_path}/cut") if f.startswith("checkpoint-")) == ["checkpoint-2"]
    out = run([f"--output_dir={tmp_path}/cut", "--max_steps=4", "--save_steps=2", "--resume_from_checkpoint"])
    assert "resumed from" in out.stdout + out.stderr
    assert_same(params(f"{tmp_path}/full/checkpoint-4"), params(f"{tmp_path}/cut/checkpoint-4"), atol=0)
    # the step-2 state differs from the step-4 state: the resumed steps did something
    assert any(
        not torch.equal(a, b)
        for a, b in zip(
            params(f"{tmp_path}/cut/checkpoint-2").values(), params(f"{tmp_path}/cut/checkpoint-4").values()
        )
    )


def test_resume_from_a_named_checkpoint(tmp_path):
    """--resume_from_checkpoint=<checkpoint folder> continues from that one, not the newest: the
    steps after it run again and reach the uninterrupted state."""
    run([f"--output_dir={tmp_path}/full", "--max_steps=4", "--save_steps=1", "--save_total_limit=4"])
    shutil.copytree(f"{tmp_path}/full", f"{tmp_path}/again", ignore=shutil.ignore_patterns(".lock"))
    out = run(
        [
            f"--output_dir={tmp_path}/again",
            "--max_steps=4",
            "--save_steps=1",
            "--save_total_limit=4",
            f"--resume_from_checkpoint={tmp_path}/again/checkpoint-2",
        ]
    )
    assert f"resumed from {tmp_path}/again/checkpoint-2 (step 2)" in out.stdout + out.stderr
    assert_same(params(f"{tmp_path}/full/checkpoint-4"), params(f"{tmp_path}/again/checkpoint-4"), atol=0)
    assert [json.loads(line)["step"] for line in open(f"{tmp_path}/again/log.jsonl")] == [1, 2, 3, 4]


def test_resume_refuses_other_model(tmp_path):
    run([f"--output_dir={tmp_path}/a", "--max_steps=1"])
    again = [f"--output_dir={tmp_path}/a", "--max_steps=1", "--resume_from_checkpoint", "--max_completion_length=32"]
    cmd = [sys.executable, "train.py", *SMALL, *again]
    out = warm.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "max_completion_length" in out.stderr and "Traceback" not in out.stderr


def test_help_print_config_and_unknown_keys(capsys):
    """--help lists every key with its default and comment; --print_config prints the resolved
    config (preset, then overrides) as JSON and exits before loading anything; a key of another
    spelling gets a "did you mean"; names imported into train.py are not keys."""
    from plumbing import data
    from plumbing.configurator import configure, declared
    from plumbing.errors import ConfigError

    script = os.path.join(ROOT, "train.py")
    keys = declared(script) | {
        k: v for f in data.option_files() for k, v in declared(f).items()
    }  # a task's options too
    with pytest.raises(SystemExit) as e:
        configure(script, ["--help"], data.option_files())
    out = capsys.readouterr().out
    assert e.value.code == 0
    for key, (default, comment, *_) in keys.items():
        assert f"--{key}" in out and repr(default) in out and comment and comment in out, key
    for args, words in [
        (["--lr=1"], "did you mean --learning_rate"),
        (["--group_size=4"], "did you mean --num_generations"),
        (["--ESTIMATORS=x"], "unknown key '--ESTIMATORS'"),
        (["--max_steps=True"], "has type bool"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(words)):
            configure(script, args)
    # the script itself: preset, override, JSON, exit 0 before any model or data is touched
    cmd = [
        sys.executable,
        "train.py",
        "configs/tiny_sudoku.py",
        "--learning_rate=1e-5",
        "--print_config",
        "--output_dir=/nonexistent/x",
    ]
    out = warm.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    cfg = json.loads(out.stdout)
    assert out.returncode == 0 and set(cfg) == set(keys) and not os.path.exists("/nonexistent/x")
    assert (
        cfg["task"] == "sudoku"
        and cfg["learning_rate"] == 1e-5
        and cfg["lora_target_modules"] == list(keys["lora_target_modules"][0])
    )


@pytest.mark.parametrize("nproc", [1, 2])
def test_math_training_runs_with_its_verifier_worker(tmp_path, nproc):
    """MATH's reward runs math-verify in a worker process, which imports train.py's main module:
    without the __main__ guard that re-ran train.py in the worker and the run hung. A few steps
    of MATH from a local file on a saved embedded model (MATH has no shipped base), in one
    process and on 2 gloo ranks, whose end leaves no worker's traceback."""
    from plumbing.model import load, save

    save(*load("tiny"), str(tmp_path / "base"))
    rows = [{"problem": f"What is {a} + {b}?", "answer": str(a + b)} for a, b in [(1, 2), (3, 4), (5, 6), (7, 8)]]
    (tmp_path / "math.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = [
        "--task=math",
        f"--model_name_or_path={tmp_path}/base",
        f"--train_file={tmp_path}/math.jsonl",
        "--compact_prompt=False",
    ]
    out = run(
        [
            *args,
            f"--output_dir={tmp_path}/run",
            "--max_steps=2",
            "--max_completion_length=8",
            "--block_length=8",
            "--sampling_steps=4",
        ],
        nproc,
    )
    logged = [json.loads(line) for line in open(f"{tmp_path}/run/log.jsonl")]
    assert [r["step"] for r in logged] == [1, 2] and all(0.0 <= r["reward"] <= 4.0 for r in logged)
    assert "Traceback" not in out.stderr  # the worker outlives a torchrun rank's os._exit: it ends on the EOF, quietly


def test_logging_at_the_released_runs_level(tmp_path):
    """log.jsonl has the released run's scalars (reward std, zero-std groups, clip low
    and high, entropy, ratio deviation), eval_every adds held-out accuracy, a line names each
    checkpoint, and log_completions_steps writes every completion with its reward and advantage."""
    out = run(
        [
            f"--output_dir={tmp_path}/r",
            "--max_steps=3",
            "--eval_items=4",
            "--eval_every=2",
            "--log_completions_steps=2",
            "--save_steps=2",
        ]
    )
    rows = [json.loads(line) for line in open(f"{tmp_path}/r/log.jsonl")]
    keys = {
        "reward",
        "reward_std",
        "frac_reward_zero_std",
        "entropy",
        "clip_low",
        "clip_high",
        "clip_frac",
        "ratio_dev",
        "kl",
        "loss",
        "accuracy",
        "completion_length",
        "grad_norm",
        "lr",
        "positions",
    }
    assert all(keys <= set(r) for r in rows) and [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert 0 <= r["accuracy"] <= 1 and 0 <= r["frac_reward_zero_std"] <= 1
        assert r["positions"] > r["rollout_passes"] * 16  # each rollout pass alone runs prompt + 16 positions
        assert abs(r["clip_low"] + r["clip_high"] - r["clip_frac"]) < 1e-6 and r["entropy"] >= 0
    assert [("eval_accuracy" in r) for r in rows] == [
        False,
        True,
        False,
    ]  # step 2; the last step's is the final evaluation
    assert 0 < rows[1]["eval_accuracy_se"] <= 0.5 or rows[1]["eval_accuracy"] in (0, 1)  # s/√n of 4 items
    assert "step 2: checkpoint" in out.stderr + out.stdout and "step 3: checkpoint" in out.stderr + out.stdout
    done = [json.loads(line) for line in open(f"{tmp_path}/r/completions.jsonl")]
    assert len(done) == 4 and {d["step"] for d in done} == {2}  # one group of 4 completions at step 2
    assert all(set(d) == {"step", "prompt", "completion", "reward", "advantage"} for d in done)
    assert abs(sum(d["advantage"] for d in done)) < 1e-5  # group-relative


def test_report_to_tensorboard_equals_the_log(tmp_path):
    """report_to=tensorboard: the event files, read back with tensorboard's own reader, hold every
    scalar of log.jsonl at its step, and the completions as text."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run([f"--output_dir={tmp_path}/r", "--max_steps=2", "--report_to=tensorboard", "--log_completions_steps=1"])
    rows = [json.loads(line) for line in open(f"{tmp_path}/r/log.jsonl")]
    events = EventAccumulator(f"{tmp_path}/r/tensorboard", size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    keys = [k for k in rows[0] if k != "step"]
    assert sorted(events.Tags()["scalars"]) == sorted(f"train/{k}" for k in keys)
    for k in keys:
        logged = events.Scalars(f"train/{k}")
        assert [e.step for e in logged] == [1, 2]
        assert all(abs(e.value - r[k]) <= 1e-6 * max(1.0, abs(r[k])) for e, r in zip(logged, rows)), (
            k
        )  # float32 in the events
    assert "completions/text_summary" in events.Tags()["tensors"]


def test_report_to_wandb_offline(tmp_path):
    """report_to=wandb in offline mode (no network): the run is written under output_dir/wandb with
    the completions tables. (wandb 0.31 has no public reader for the scalars of an offline run.)"""
    import glob

    run(
        [f"--output_dir={tmp_path}/r", "--max_steps=2", "--report_to=wandb", "--log_completions_steps=1"],
        env={"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_NAME": "t"},
    )
    offline = glob.glob(f"{tmp_path}/r/wandb/offline-run-*")
    assert len(offline) == 1 and glob.glob(f"{offline[0]}/run-*.wandb")
    tables = [json.load(open(f)) for f in sorted(glob.glob(f"{offline[0]}/files/media/table/completions_*.table.json"))]
    done = [json.loads(line) for line in open(f"{tmp_path}/r/completions.jsonl")]
    assert len(tables) == 2
    assert [row[:3] for t in tables for row in t["data"]] == [[d["prompt"], d["completion"], d["reward"]] for d in done]


def test_threshold_rollouts_train(tmp_path):
    """unmasking=threshold: each completion takes its own number of steps; a run trains on them and
    logs the forward passes a rollout took."""
    run([f"--output_dir={tmp_path}/r", "--max_steps=2", "--unmasking=threshold", "--threshold=0.5", "--mc_samples=2"])
    rows = [json.loads(line) for line in open(f"{tmp_path}/r/log.jsonl")]
    assert [r["step"] for r in rows] == [1, 2] and all(1 <= r["rollout_passes"] <= 16 for r in rows)


def test_long_prompts_are_cut_from_the_left_and_counted(tmp_path):
    """max_prompt_length (TRL's name and behaviour): a longer prompt keeps its last tokens, the run
    names the longest training prompt once and logs the fraction of rows cut each step."""
    from plumbing.data import build_prompt
    from plumbing.model import load

    _, tok = load("tiny")
    item = {"question": "x" * 500 + " 1 + 1?", "answer": "2"}
    whole = build_prompt(tok, "gsm8k", item)
    assert build_prompt(tok, "gsm8k", item, max_length=40) == whole[-40:] and len(whole) > 40
    path = tmp_path / "gsm8k.jsonl"
    path.write_text(json.dumps(item) + "\n" + json.dumps({"question": "2 + 2?", "answer": "4"}) + "\n")
    out = run(
        [
            f"--output_dir={tmp_path}/run",
            "--task=gsm8k",
            f"--train_file={path}",
            "--eval_items=0",
            "--max_prompt_length=40",
            "--max_steps=2",
            "--per_device_train_batch_size=8",
            "--model_name_or_path=tiny",
        ]
    )
    text = out.stdout + out.stderr
    assert (
        "1 of 2 training prompts are longer than max_prompt_length=40 tokens and are cut from the left; the longest, "
        "training "
        f"item 0, has {len(whole)} tokens" in text
    )
    rows = [json.loads(line) for line in open(f"{tmp_path}/run/log.jsonl")]
    assert [r["frac_prompts_cut"] for r in rows] == [0.5, 0.5]  # both prompts in every step (2 groups of 4)


def test_every_training_preset_resolves_and_validates():
    """Each preset of configs/ (the released LLaDA runs, Dream's and SDAR's, the embedded ones) sets only
    train.py keys, and what it sets passes train.py's checks (lengths, blocks, steps, ranges); eval.py
    presets (configs/*_eval.py) are eval.py's and left out."""
    import glob
    from types import SimpleNamespace

    import train
    from plumbing import configurator, data

    presets = sorted(p for p in glob.glob("configs/*.py") if not os.path.basename(p).startswith("_"))
    presets = [p for p in presets if not p.endswith("_eval.py")]
    assert {"configs/sdar_gsm8k.py", "configs/dream_gsm8k.py", "configs/llada_gsm8k.py"} <= set(presets)
    for preset in presets:
        cfg = SimpleNamespace(
            **configurator.configure("train.py", [preset], data.option_files(), train.RANGES, train.CHOICES)
        )
        train.validate(cfg)
        assert cfg.output_dir.startswith("runs/"), preset


@pytest.mark.parametrize("script", ["train.py", "eval.py", "tools/sft.py"])
def test_choices_are_checked_where_they_are_declared(script):
    """A script's CHOICES (the code's own lists) are what the configurator refuses and --help shows, --print_config
    included; each default is one of them, and a list a key's comment writes out (a | b | c) is the same list."""
    import importlib

    from plumbing import configurator, data

    module = importlib.import_module(script.removesuffix(".py").replace("/", "."))
    known = configurator.declared(script)
    shown = warm.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True).stdout
    for key, allowed in module.CHOICES.items():
        assert known[key][0] in allowed and f"[one of {' | '.join(allowed)}]" in shown, key
        listed = re.search(r"((?:\w+(?: \([^)]*\))? \| )+\w+)", known[key][1])
        if listed:
            assert {part.split()[0] for part in listed.group(1).split(" | ")} == set(allowed), key
        with pytest.raises(ConfigError, match=re.escape(f"--{key}='bogus' must be one of {' | '.join(allowed)}")):
            configurator.configure(
                script, [f"--{key}=bogus", "--print_config"], data.option_files(), {}, module.CHOICES
            )
    bad = dict(zip(["train.py", "eval.py"], ["--scheme=bogus", "--eval_split=train"])).get(script, "--task=gsm8k")
    out = warm.run([sys.executable, script, bad,
                          "--print_config"], cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 1 and out.stdout == "" and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_the_docs_list_the_codes_choices():
    """README's key table names every estimator, scheme, unmasking and reporter train.py accepts, ALGORITHM.md
    describes every sampled scheme (§2) and both ablations (§3)."""
    import train

    readme, algorithm = (open(os.path.join(ROOT, f)).read() for f in ("README.md", "ALGORITHM.md"))
    rows = {line.split("|")[1].strip(): line for line in readme.splitlines() if line.startswith("| `")}
    for key in ("estimator", "scheme", "unmasking", "report_to"):
        row = next(line for cell, line in rows.items() if f"`{key}`" in cell)
        assert all(f"`{value}`" in row for value in train.CHOICES[key]), key
    section = algorithm.split("## 2.")[1].split("\n## ")[0]
    assert all(f"**{s.replace('_', '-')}**" in section for s in train.CHOICES["scheme"] if s != "exact")
    assert "**ELBO**" in algorithm and "one-step" in algorithm
