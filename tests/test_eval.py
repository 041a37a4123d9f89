"""eval.py: the grid script's files, sharded equals unsharded, standard errors, checkpoint
loading (full and LoRA, merged or not), and one-line errors for bad input."""

import json
import math
import os
import re
import signal
import subprocess
import sys

import pytest
import torch
import warm

from plumbing import checkpoint, restore
from plumbing.families import FAMILIES
from plumbing.logits import forward_logits
from plumbing.model import add_lora, load, save
from plumbing.stats import mean_se, paired_change, standard_error
from sample import check_settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--eval_items=8", "--per_device_eval_batch_size=3", "--max_completion_length=(16,)", "--task=countdown"]


TINY = ["--models=('tiny',)", "--labels=()"]


def run_eval(args, nproc=1):
    cmd = [sys.executable, "eval.py", *SMALL, *args]
    if nproc > 1:
        launch = ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--standalone"]  # a free port
        cmd = [sys.executable, *launch, "eval.py", *SMALL, *args]
    return warm.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1")
    )


def fake_run(out_dir, lora_rank=0):
    """A training checkpoint of the tiny model with perturbed weights, as train.py writes it."""
    model, _ = load("tiny")
    if lora_rank:
        model = add_lora(model, lora_rank, 2 * lora_rank)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    os.makedirs(out_dir, exist_ok=True)
    config = dict(
        model_name_or_path="tiny",
        lora_r=lora_rank,
        lora_alpha=2 * lora_rank,
        lora_target_modules=FAMILIES["llada"].lora_targets,
    )
    return model, checkpoint.save(out_dir, 3, model, opt, sched, config)


def test_standard_error_known_cases():
    assert standard_error([1, 0, 1, 0]) == pytest.approx(math.sqrt(1 / 3) / 2)  # s² = 1/3, n = 4
    assert standard_error([0.25, 0.75]) == pytest.approx(0.25)  # s² = 0.125, n = 2
    assert standard_error([1, 1, 1]) == 0.0 and standard_error([0.5]) == 0.0
    # paired: the error of the per-item changes [1, 0, 0, 0] (s² = 1/4, n = 4), not of two independent means
    assert paired_change([0, 1, 1, 0], [1, 1, 1, 0]) == pytest.approx((0.5, 0.75, 0.25))
    assert paired_change([0, 1], [0, 1])[2] == 0.0  # the same items decoded alike: no change, no error
    with pytest.raises(ValueError):
        paired_change([0, 1], [1])


def test_a_standard_error_of_one_value_is_the_one_asked_for():
    """Of one value s is undefined: 0 unless the caller asks for another (NaN in bench/compare_estimators.py's
    tables of one seed, so no error shows as measured); two or more values are not affected."""
    assert mean_se([0.5]) == (0.5, 0.0)
    mean, se = mean_se([0.5], float("nan"))
    assert mean == 0.5 and math.isnan(se) and math.isnan(standard_error([0.5], float("nan")))
    assert mean_se([1, 0, 1, 0], float("nan")) == mean_se([1, 0, 1, 0]) == (0.5, standard_error([1, 0, 1, 0]))


@pytest.mark.parametrize("lora_rank", [0, 4])
@pytest.mark.parametrize("merge", [True, False])
def test_load_trained_gives_the_trained_model(tmp_path, lora_rank, merge):
    trained, path = fake_run(tmp_path, lora_rank)
    loaded, _, cfg = restore.load_trained(path, merge_lora=merge)
    assert cfg["lora_r"] == lora_rank
    ids = torch.randint(10, 60, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(
            forward_logits(loaded, ids), forward_logits(trained.eval(), ids), atol=1e-5, rtol=1e-5
        )
        base, _ = load("tiny")
        assert not torch.allclose(forward_logits(base, ids), forward_logits(loaded, ids), atol=1e-3)


def test_grid_writes_table_plot_and_samples(tmp_path):
    save(*load("tiny"), f"{tmp_path}/base")
    fake_run(f"{tmp_path}/run")
    models = f"--models=('{tmp_path}/base','{tmp_path}/run')"
    out = run_eval([models, "--labels=()", f"--output_dir={tmp_path}/eval", "--thresholds=(2.0,)"])
    assert out.returncode == 0, out.stderr[-3000:]
    for name in ("results.md", "results.json", "samples.jsonl", "accuracy_vs_steps.png"):
        assert os.path.getsize(f"{tmp_path}/eval/{name}") > 0, name
    rows = json.load(open(f"{tmp_path}/eval/results.json"))["rows"]
    # the m = G/4, G/2, G grid, then threshold decoding (τ > 1: one token a step, 16 passes per item without EOS)
    assert [(r["max_completion_length"], r["threshold"]) for r in rows] == [(16, None)] * 3 + [(16, 2.0)] + [
        (16, None)
    ] * 3 + [(16, 2.0)]
    assert [r["sampling_steps"] for r in rows if r["threshold"] is None] == [4, 8, 16] * 2
    assert all(1 <= r["sampling_steps"] <= 16 for r in rows if r["threshold"] is not None)
    table = open(f"{tmp_path}/eval/results.md").read()
    assert table.count("| countdown | 16 |") == 8 and f"{tmp_path}/run" in table and "τ = 2.0" in table
    samples = [json.loads(line) for line in open(f"{tmp_path}/eval/samples.jsonl")]
    assert len(samples) == 8 * 8
    assert {"prompt", "completion", "answer", "reward", "correct"} <= set(samples[0])
    # the table's accuracy is the mean of the per-example records
    first = [
        s["accuracy"]
        for s in samples
        if s["model"] == rows[0]["model"] and s["sampling_steps"] == 4 and s["threshold"] is None
    ]
    assert rows[0]["accuracy"] == pytest.approx(sum(first) / 8) and rows[0]["se"] == pytest.approx(
        standard_error(first)
    )
    # the second model against the first on the same items: the change and the error of the per-item changes
    second = [s["accuracy"] for s in samples if s["model"] == rows[4]["model"] and s["sampling_steps"] == 4]
    changes = [b - a for a, b in zip(first, second)]
    assert "change" not in rows[0] and rows[4]["change"] == pytest.approx(sum(changes) / 8)
    assert rows[4]["change_se"] == pytest.approx(standard_error(changes))
    paired = re.findall(r"\| [+-]\d+\.\d ± \d+\.\d \|", table)
    assert f"| vs {tmp_path}/base (points) |" in table and len(paired) == 4  # the second model's 4 cells


def test_results_name_the_split_they_score(tmp_path):
    """--eval_split=validation scores the validation problems, and results.md and the printout say so."""
    out = run_eval([*TINY, "--eval_split=validation", "--step_fractions=(1.0,)", f"--output_dir={tmp_path}/v"])
    assert out.returncode == 0, out.stderr[-3000:]
    header = open(f"{tmp_path}/v/results.md").read().split("|")[0]
    assert "countdown, 8 validation items" in header and "countdown, 8 validation items" in out.stdout
    assert "test items" not in header + out.stdout


def test_sharded_equals_one_process(tmp_path):
    fake_run(f"{tmp_path}/run")
    args = [f"--models=('{tmp_path}/run',)", "--labels=('m',)", "--step_fractions=(0.5,)"]
    one = run_eval(args + [f"--output_dir={tmp_path}/one"])
    two = run_eval(args + [f"--output_dir={tmp_path}/two"], nproc=2)
    assert one.returncode == 0 and two.returncode == 0, one.stderr[-2000:] + two.stderr[-2000:]
    a, b = (open(f"{tmp_path}/{d}/samples.jsonl").read() for d in ("one", "two"))
    assert a == b and len(a.splitlines()) == 8


@pytest.mark.parametrize(
    "args, words",
    [
        (["--models=('runs/no_such_run',)", "--labels=()"], "no_such_run does not exist"),
        (["--models=('/tmp/nothing/checkpoint-1',)", "--labels=()"], "checkpoint-1 does not exist"),
        (["--task=chess", *TINY], "--task='chess' must be one of countdown | gsm8k | math | sudoku"),
        (["--sampling_steps=(3,)", *TINY], "steps=3 must be a positive multiple"),
        (["--block_length=5", *TINY], "block_length=5 must divide"),
        (["--labels=('a',)", "--models=('tiny','tiny')"], "--labels has 1 names for 2 models"),
        (["--labels=('a','a')", "--models=('tiny','tiny')"], "--labels=('a', 'a') names a model twice"),
        (["--labels=()", "--models=('tiny','tiny')"], "--models=('tiny', 'tiny') names a model twice"),
        (["--models=()"], "--models=() must be a non-empty tuple of model paths"),
        (["--eval_file=/no/file.jsonl", *TINY], "eval_file=/no/file.jsonl does not exist"),
        # 3 rows of 10^9 positions (~3 TiB): refused before the decode allocates (10^7 was killed by the kernel)
        (["--max_completion_length=(1000000000,)", *TINY], "--max_completion_length=1000000000 needs at least"),
        (["--unmasking=threshold", *TINY], "--unmasking=threshold decodes by --thresholds, which is empty"),
        (["--unmasking=threshold", "--thresholds=(0.9,)", "--sampling_steps=(3,)", *TINY], "steps=3 must be a posi"),
    ],
)
def test_bad_input_is_one_line(args, words):
    out = run_eval(args)
    assert out.returncode != 0
    assert words in out.stderr and "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, (
        out.stderr
    )


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_mid_grid_writes_the_cells_decoded(tmp_path, stop):
    """Ctrl-C (SIGINT) or a cluster's preemption (SIGTERM) once the first cell's line is out (the second, G = 256
    at m = 256, takes seconds after it): the first cell is written, marked partial, and the stop said in one line
    with the shell's status for that signal."""
    cmd = [sys.executable, "-u", "eval.py", *SMALL, *TINY, "--max_completion_length=(8,256)", "--step_fractions=(1.0,)"]
    cmd.append(f"--output_dir={tmp_path}/eval")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    for line in proc.stdout:  # a cold start: its output read as it comes
        if "accuracy" in line:
            break
    proc.send_signal(stop)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + stop and "Traceback" not in err, err
    assert "eval.py: interrupted after 1 of 2 cells; wrote them to" in err.strip().splitlines()[-1], err
    results = json.load(open(f"{tmp_path}/eval/results.json"))
    assert [r["max_completion_length"] for r in results["rows"]] == [8] and "interrupted" in results["partial"]
    assert "Partial: interrupted after 1 of 2 cells" in open(f"{tmp_path}/eval/results.md").read()
    assert len(open(f"{tmp_path}/eval/samples.jsonl").readlines()) == 8


def test_unreadable_checkpoint_is_one_line(tmp_path):
    os.makedirs(f"{tmp_path}/checkpoint-1")
    with open(f"{tmp_path}/checkpoint-1/trainer_state.json", "wb") as f:
        f.write(b"not a checkpoint")
    out = run_eval([f"--models=('{tmp_path}',)", "--labels=()"])
    assert out.returncode != 0 and "cannot be read" in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_a_run_is_evaluated_as_it_was_trained(tmp_path):
    """Task, system turn, prompt form, test set and evaluation decoding come from the run's recorded
    config unless given on the command line; the table's header says which were used."""
    model, _ = load("tiny")
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    # a recorded system turn is the exact text the run used: one ending in .txt is not read as a file again
    config = dict(
        model_name_or_path="tiny",
        lora_r=0,
        task="sudoku",
        system_prompt="Fill the grid. See notes.txt",
        compact_prompt=True,
        seed=0,
        sudoku_blanks=[10, 10],
        eval_file="",
        eval_items=5,
        max_completion_length=24,
        block_length=8,
        sampling_steps=6,
    )
    checkpoint.save(f"{tmp_path}/run", 3, model, opt, sched, config)
    args = [f"{sys.executable}", "eval.py", f"--models=('{tmp_path}/run',)", "--labels=()"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = warm.run(
        [*args, f"--output_dir={tmp_path}/e"], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env
    )
    assert out.returncode == 0, out.stderr[-2000:]
    samples = [json.loads(line) for line in open(f"{tmp_path}/e/samples.jsonl")]
    assert len(samples) == 5 and all((s["max_completion_length"], s["sampling_steps"]) == (24, 6) for s in samples)
    assert all("Fill the grid. See notes.txt" in s["prompt"] for s in samples)
    header = open(f"{tmp_path}/e/results.md").read().split("|")[0]
    assert "sudoku, 5 test items" in header and f"from {tmp_path}/run/checkpoint-3: task='sudoku'" in header
    out = warm.run(
        [*args, "--eval_items=3", "--system_prompt=", f"--output_dir={tmp_path}/f"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    samples = [json.loads(line) for line in open(f"{tmp_path}/f/samples.jsonl")]
    assert len(samples) == 3 and not any("Fill the grid." in s["prompt"] for s in samples)
    assert "from the command line: system_prompt='', eval_items=3" in open(f"{tmp_path}/f/results.md").read()
    # a preset of another task, or --task, never silently changes what the checkpoint was trained on
    preset = warm.run([*args, "configs/llada_gsm8k.py", "--print_config"], cwd=ROOT, capture_output=True, text=True)
    assert json.loads(preset.stdout)["task"] == "sudoku"
    assert (
        f"{tmp_path}/run/checkpoint-3 was trained with task='sudoku', configs/llada_gsm8k.py sets 'gsm8k'"
        in preset.stderr
    )
    asked = warm.run([*args, "--task=countdown", "--print_config"], cwd=ROOT, capture_output=True, text=True)
    assert json.loads(asked.stdout)["task"] == "countdown"
    assert "was trained with task='sudoku'; evaluating with --task='countdown'" in asked.stderr


def test_a_training_preset_serves_eval(tmp_path):
    """`python eval.py configs/llada_gsm8k.py` evaluates as the run trains (384 tokens, blocks of 12,
    128 steps, the whole test set, the task's own system turn, full sentences); with
    configs/llada_eval.py after it, as the released evaluation decodes (256 tokens, blocks of 32)."""
    cmd = [sys.executable, "eval.py", "configs/llada_gsm8k.py", "--models=('tiny',)", "--labels=()", "--print_config"]
    cfg = json.loads(warm.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120).stdout)
    assert (cfg["task"], cfg["max_completion_length"], cfg["block_length"], cfg["sampling_steps"]) == (
        "gsm8k",
        [384],
        12,
        [128],
    )
    assert (cfg["eval_items"], cfg["system_prompt"], cfg["compact_prompt"], cfg["seed"]) == (-1, "task", False, 333)
    assert cfg["output_dir"] == "runs/llada_gsm8k/eval"
    released = [*cmd[:3], "configs/llada_eval.py", *cmd[3:]]
    cfg = json.loads(warm.run(released, cwd=ROOT, capture_output=True, text=True, timeout=120).stdout)
    assert (
        cfg["max_completion_length"],
        cfg["block_length"],
        cfg["sampling_steps"],
        cfg["per_device_eval_batch_size"],
    ) == (
        [256],
        32,
        [128],
        8,
    )
    assert (cfg["task"], cfg["eval_items"], cfg["system_prompt"]) == ("gsm8k", -1, "task")
    out = warm.run([*released, "--block_length=16"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert json.loads(out.stdout)["block_length"] == 16
    # a preset names its own models (its base, and its run once it has a checkpoint), never eval.py's defaults
    dream = [sys.executable, "eval.py", "configs/dream_gsm8k.py", "--print_config"]
    out = warm.run(dream, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert (json.loads(out.stdout)["models"], json.loads(out.stdout)["labels"]) == (
        ["Dream-org/Dream-v0-Instruct-7B"],
        ["base"],
    )
    assert "runs/dream_gsm8k holds no checkpoint yet" in out.stderr
    sdar = [sys.executable, "eval.py", "configs/sdar_gsm8k.py", "--models=('tiny',)", "--labels=()", "--print_config"]
    cfg = json.loads(warm.run(sdar, cwd=ROOT, capture_output=True, text=True, timeout=120).stdout)
    # SDAR's run decodes by dynamic threshold 0.9 in blocks of 4, at most 4 steps a block, as dLLM-RL's evaluation
    # does: no fixed-step rows
    assert (cfg["block_length"], cfg["thresholds"], cfg["sampling_steps"], cfg["unmasking"]) == (
        4,
        [0.9],
        [384],
        "threshold",
    )


@pytest.mark.parametrize("source", ["preset", "checkpoint"])
def test_a_threshold_run_is_scored_by_train_and_eval_with_one_decoder(tmp_path, source):
    """A run that rolls out by threshold: train.py's held-out accuracy and eval.py's grid (from the training
    preset, or from the run's checkpoint) decode with the same settings (threshold τ, at most the run's
    sampling_steps, its length and blocks), and give the same per-item scores on the shipped model."""
    from types import SimpleNamespace

    import eval as eval_py
    from plumbing import data
    from plumbing.configurator import configure
    from plumbing.eval_settings import eval_settings, held_out_decoding, row_decoding

    preset = tmp_path / "threshold_run.py"
    preset.write_text(f'unmasking = "threshold"\nthreshold = 0.6\nsampling_steps = 4\noutput_dir = "{tmp_path}/run"\n')
    train_cfg = configure(f"{ROOT}/train.py", [str(preset)], data.option_files())
    decoding = held_out_decoding(train_cfg)
    assert decoding == dict(
        max_completion_length=16, block_length=8, sampling_steps=4, unmasking="threshold", threshold=0.6
    )
    if source == "preset":
        argv = [str(preset), "--models=('models/tiny-countdown',)", "--labels=()"]
    else:
        model, tok = load("models/tiny-countdown")
        opt = torch.optim.AdamW(model.parameters())
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        checkpoint.save(f"{tmp_path}/run", 1, model, opt, sched, train_cfg, tok=tok)
        argv = [f"--models=('{tmp_path}/run',)", "--labels=()"]
    argv += [f"--output_dir={tmp_path}/eval"]
    cfg, _, grid, system, _ = eval_settings(
        f"{ROOT}/eval.py", argv, eval_py.RANGES, eval_py.CHOICES, check_decoding=check_settings
    )
    assert len(grid) == 1 and row_decoding(cfg, *grid[0]) == decoding
    model, tok = load("models/tiny-countdown")
    items = data.test_set("countdown", "", 6, 0, "test", **data.task_options("countdown", train_cfg))
    trained = eval_py.item_accuracies(model, tok, SimpleNamespace(**train_cfg), items)
    form = dict(system_prompt=system, compact=cfg["compact_prompt"], max_prompt_length=cfg["max_prompt_length"])
    evaluated = eval_py.evaluate(model, tok, cfg["task"], items, **row_decoding(cfg, *grid[0]), **form)
    assert trained == [r["accuracy"] for r in evaluated]


def test_a_run_folder_is_evaluated_from_its_newest_whole_checkpoint(tmp_path):
    """A run whose newest checkpoint lost its adapters: eval.py warns and takes the one before it."""
    model, _ = load("tiny")
    model = add_lora(model, 2, 4)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    config = dict(model_name_or_path="tiny", lora_r=2, lora_alpha=4, lora_target_modules=FAMILIES["llada"].lora_targets)
    for step in (1, 2):
        checkpoint.save(str(tmp_path), step, model, opt, sched, config)
    os.remove(f"{tmp_path}/checkpoint-2/adapter_model.safetensors")
    assert checkpoint.newest_whole(str(tmp_path), log=lambda *a: None) == f"{tmp_path}/checkpoint-1"
    out = run_eval([f"--models=('{tmp_path}',)", "--labels=()", "--eval_items=2", f"--output_dir={tmp_path}/e"])
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"warning: checkpoint {tmp_path}/checkpoint-2: adapter_model.safetensors is missing" in out.stderr
    assert json.loads(open(f"{tmp_path}/e/samples.jsonl").readline())["model"] == str(tmp_path)


@pytest.mark.parametrize("unmasking", ["low_confidence", "threshold"])
def test_a_block_models_bf16_rows_decode_as_they_would_alone(unmasking):
    """In bf16 a padded row's rounding depends on its batch-mates (a block model's mask and canvas): evaluate
    batches prompts of one length, so every row's greedy completion is the one it gets alone."""
    from eval import evaluate, prompt_batches
    from plumbing import data
    from plumbing.model import load

    model, tok = load("tiny_block", seed=0, tiny_overrides=dict(init_std=0.3), dtype=torch.bfloat16)
    items = data.task("countdown").generate(12, seed=3, num_range=(1, 99), target_range=(1, 999))
    kw = dict(max_completion_length=16, block_length=8, sampling_steps=16, unmasking=unmasking, threshold=0.5)
    together = evaluate(model, tok, "countdown", items, batch_size=6, compact=True, **kw)
    alone = [evaluate(model, tok, "countdown", [it], batch_size=1, compact=True, **kw)[0] for it in items]
    assert [r["completion"] for r in together] == [r["completion"] for r in alone]
    lengths = [len(data.build_prompt(tok, "countdown", it, "", True, 0)) for it in items]
    assert len(set(lengths)) > 1  # prompts of several lengths, so a batch of all of them would be padded
    for batch in prompt_batches(lengths, 6, in_float32=False):
        assert len({lengths[i] for i in batch}) == 1
