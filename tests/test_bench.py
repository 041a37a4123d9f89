"""The benchmark scripts run end to end in their quick modes (numbers are not checked here)."""

import glob
import os
import sys

import pytest
import warm

from likelihood import ESTIMATORS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
    "script, flags, expect",
    [
        ("bench/bench_estimators.py", [], ["| stepwise"]),
        (
            "bench/bench_sample.py",
            ["--profile"],
            [
                "identical tokens at temperature 0: yes",
                "Self CPU time total",
                "| generate (threshold τ = 0.9)",
                "| fixed, m = 4 |",
                "| threshold τ = 0.5 |",
            ],
        ),
        ("bench/bench_train.py", ["--profile", "--lora_r=4"], ["| k=2 fwd+bwd", "Self CPU time total"]),
        (
            "bench/bench_blocks.py",
            [],
            ["identical tokens: True", "| exact sum, one packed forward", "full passes (bound", "| threshold τ = 0.9"],
        ),
    ],
)
def test_bench_quick(script, flags, expect):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = warm.run(
        [sys.executable, script, "--quick", *flags], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env
    )
    assert out.returncode == 0, out.stderr
    assert all(e in out.stdout for e in expect)


@pytest.mark.parametrize(
    "config", ["configs/tiny_sudoku.py"]
)  # one preset: the script's pipeline; train.py's Countdown runs in test_train
def test_compare_estimators_quick(tmp_path, config):
    """Sweep, test runs, tables; a second call finds every run and evaluation cached and redoes none."""
    cmd = [sys.executable, "bench/compare_estimators.py", "--quick", config, f"--output_dir={tmp_path}/run"]
    out = warm.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert os.listdir(tmp_path) == ["run_quick"]  # never the folder of the measured results
    tmp_path = tmp_path / "run_quick"
    text = open(f"{tmp_path}/RESULTS.md").read()
    for model in ("base", *ESTIMATORS, "exact (stepwise rate)"):  # every estimator of the code's list
        assert f"| {model} |" in text
    assert "## 1. Sweep" in text and "validation" in text
    assert all(f"stepwise − {e}" in text for e in ESTIMATORS if e != "stepwise")
    assert ("sudoku" in text) == ("sudoku" in config) and os.path.getsize(f"{tmp_path}/reward_curves.png") > 0
    stamps = {p: os.path.getmtime(p) for p in glob.glob(f"{tmp_path}/runs/*/*") if not p.endswith(".lock")}
    again = warm.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {p: os.path.getmtime(p) for p in stamps} == stamps  # nothing retrained or re-scored
    # other settings never reuse runs trained with these: train.py refuses to continue them otherwise
    other = warm.run([*cmd, "--mc_samples=1"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert other.returncode != 0 and "has mc_samples=2 but this run has mc_samples=1" in other.stderr, other.stderr


def test_a_comparison_reuses_only_what_the_same_settings_made(tmp_path):
    """run_unless_done runs a script again when its inputs differ from those recorded, never after a failure."""
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    from common import run_unless_done

    script = tmp_path / "count.py"
    script.write_text(
        f"import sys\nopen({str(tmp_path / 'calls')!r}, 'a').write('x')\nsys.exit(sys.argv[1] == 'fail')\n"
    )
    calls = lambda: len((tmp_path / "calls").read_text())  # noqa: E731
    assert run_unless_done(1, tmp_path / "out", {"k": (1, 2)}, str(script), "ok") and calls() == 1
    assert not run_unless_done(1, tmp_path / "out", {"k": [1, 2]}, str(script), "ok") and calls() == 1
    assert run_unless_done(1, tmp_path / "out", {"k": (1, 3)}, str(script), "ok") and calls() == 2
    with pytest.raises(RuntimeError):
        run_unless_done(1, tmp_path / "failed", {"k": 1}, str(script), "fail")
    assert run_unless_done(1, tmp_path / "failed", {"k": 1}, str(script), "ok") and calls() == 4


def test_compare_threshold_quick(tmp_path):
    cmd = [sys.executable, "bench/compare_threshold.py", "--quick", f"--output_dir={tmp_path}/run"]
    out = warm.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert os.listdir(tmp_path) == ["run_quick"]  # never the folder of the measured results
    text = open(f"{tmp_path}/run_quick/RESULTS.md").read()
    assert "| fixed | 2 |" in text and "| threshold | 2 |" in text
    assert os.path.getsize(f"{tmp_path}/run_quick/accuracy_vs_rollout_passes.png") > 0


def test_bench_scripts_are_configured_like_train_py():
    """The benches take train.py's key names as --key=value, list them in --help, and refuse any
    other spelling in one line (with a "did you mean" for another library's name), and a rollout shape
    the sampler refuses before any model is built."""
    help_text = warm.run(
        [sys.executable, "bench/bench_train.py", "--help"], cwd=ROOT, capture_output=True, text=True
    ).stdout
    for key in ("--mc_samples", "--lora_r", "--gradient_checkpointing", "--sampling_steps", "--max_completion_length"):
        assert key in help_text
    for script, flag, words in [
        ("bench/bench_train.py", "--lora_rank=4", "did you mean --lora_r"),
        ("bench/bench_sample.py", "--steps=4", "did you mean --sampling_steps"),
        ("bench/compare_threshold.py", "--nonsense=1", "unknown key '--nonsense'"),
        ("bench/bench_sample.py", "--max_completion_length=32", "sampling_steps=128 gives 128 steps per block"),
        ("bench/bench_train.py", "--block_length=48", "block_length=48 must divide max_completion_length=256"),
    ]:
        out = warm.run([sys.executable, script, flag], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert out.returncode != 0 and words in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_memory_model_counts_llada_8b():
    """bench/memory.py: the parameter count of LLaDA-8B's shape from its config by hand (embedding, 32
    blocks of attention, SwiGLU and two norms, final norm, head), the sharded rows as 1/gpus, the prompt
    length the preset's max_prompt_length, the reference copy at beta > 0 (full fine-tuning only), and
    the bytes sent per step by the formula of collective_bytes' docstring."""
    out = warm.run(
        [sys.executable, "bench/memory.py", "--gpus=4", "--beta=0.04", "--max_prompt_length=300"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    V, h, f, n = 126464, 4096, 12288, 32
    P = V * h + n * (4 * h * h + 3 * h * f + 2 * h) + h + h * V
    assert f"{P / 1e9:.3f} B parameters" in out.stdout
    assert "8 rows x (300 prompt, the preset's max_prompt_length, + 384 completion) tokens" in out.stdout
    rows = {
        line.split("|")[1].strip(): line.split("|")[2:-1] for line in out.stdout.splitlines() if line.startswith("| ")
    }
    assert float(rows["FSDP, full"][0]) == pytest.approx(4 * P / 4 / 2**30, abs=0.06)  # float32 weights, 1/4 each
    assert float(rows["FSDP, full"][2]) == pytest.approx(8 * P / 4 / 2**30, abs=0.06)  # AdamW's two moments
    assert float(rows["DDP, full"][0]) == pytest.approx(2 * P / 2**30, abs=0.06)  # whole, bf16
    # the reference at beta > 0: a bf16 copy under DDP, float32 shards under FSDP, nothing with LoRA
    assert float(rows["DDP, full"][3]) == pytest.approx(2 * P / 2**30, abs=0.06)
    assert float(rows["FSDP, full"][3]) == pytest.approx(4 * P / 4 / 2**30, abs=0.06)
    assert float(rows["DDP + LoRA"][3]) == float(rows["FSDP + LoRA"][3]) == 0
    # the optimizer step: weights, gradients (DDP's buckets too), moments and the reference; fused AdamW nothing more
    assert float(rows["DDP, full"][7]) == pytest.approx((2 + 4 + 4 + 2) * P / 2**30, abs=0.06)
    # sent per step under FSDP, full: 2 micro-batches x 24 draws, each a bf16 gather for forward and for backward
    # (the root, R, stays gathered) and a float32 reduce-scatter; the rollouts gather policy and reference
    R = 2 * V * h + h
    sent = 3 / 4 * (48 * (2 * P + 2 * (P - R) + 4 * P) + 2 * 2 * P)
    assert float(rows["FSDP, full"][8]) == pytest.approx(sent / 2**30, abs=0.06)
    assert float(rows["DDP, full"][8]) == pytest.approx(2 * 3 / 4 * 2 * P / 2**30, abs=0.06)  # one all-reduce, bf16
    # the update peak: what stays resident, what the forward keeps (300 + 384 tokens, 8 rows, 3 read a row) and
    # backward's working set, the functions the CPU measurement checks
    memory = _memory_module()
    shape = dict(memory.LLADA_8B)
    _, A, _, adapted, head_r = memory.counts(shape, 64, memory.FAMILIES["llada"].lora_targets)
    kept = memory.activations(shape, 8, 684, 3, 64, adapted, head_r, 150, False)
    peak = 2 * P + 4 * A + 8 * A + 8 * A + kept + memory.backward_working_set(shape, 8, 684)
    assert float(rows["DDP + LoRA"][5]) == pytest.approx(peak / 2**30, abs=0.06)


def _distributions(roots):
    """The installed distributions `roots` need, by normalized name: the closure of their requirements
    (markers evaluated for this python, no extras)."""
    from importlib.metadata import distribution

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    found, todo = {}, list(roots)
    while todo:
        name = canonicalize_name(todo.pop())
        if name not in found:
            found[name] = distribution(name)
            for line in found[name].requires or []:
                req = Requirement(line)
                if req.marker is None or req.marker.evaluate({"extra": ""}):
                    todo.append(req.name)
    return found


def _target_with(folder, dists):
    """A folder holding only `dists`' files (their top-level entries linked from this environment)."""
    os.makedirs(folder)
    for dist in dists.values():
        for top in {f.parts[0] for f in dist.files if f.parts[0] != ".."}:
            if not os.path.lexists(os.path.join(folder, top)):
                os.symlink(dist.locate_file(top), os.path.join(folder, top))
    return folder


def test_gpu_wheel_set_is_closed(tmp_path):
    """bench/gpu_wheels.txt (what bench/gpu.sh installs in front of a GPU image's packages) is exactly what
    transformers, peft and einops need beyond torch's own requirements, pins transformers and peft as
    requirements.txt does, and with torch alone runs bench/gpu_check.py in a python that sees nothing else;
    one library left out (accelerate, which peft imports) ends the check in one line naming it."""
    from packaging.utils import canonicalize_name

    def pins(path):
        lines = [line.split("#")[0].strip() for line in open(os.path.join(ROOT, path))]
        return dict(line.split("==") for line in lines if "==" in line)

    wheels = {canonicalize_name(name): version for name, version in pins("bench/gpu_wheels.txt").items()}
    required = {canonicalize_name(name): version for name, version in pins("requirements.txt").items()}
    assert {n: wheels[n] for n in ("transformers", "peft")} == {n: required[n] for n in ("transformers", "peft")}
    with_torch = _distributions(["torch"])
    needed = _distributions(["transformers", "peft", "einops"])
    assert set(wheels) == set(needed) - set(with_torch)
    import subprocess

    def check(names):
        dists = with_torch | {n: d for n, d in needed.items() if n in names}
        target = _target_with(str(tmp_path / "-".join(sorted(set(wheels) - set(names)) or ["all"])), dists)
        env = dict(os.environ, PYTHONPATH=target, OMP_NUM_THREADS="1")
        cmd = [sys.executable, "-S", "bench/gpu_check.py"]  # -S: no site-packages, only the target
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)

    res = check(set(wheels))
    assert res.returncode == 0 and res.stdout.startswith("gpu_check: ok"), res.stderr[-2000:]
    res = check(set(wheels) - {"accelerate"})
    assert res.returncode == 1 and res.stderr.strip().splitlines() == [
        "gpu_check: this python cannot run the GPU benches: No module named 'accelerate' (bench/gpu.sh installs .whl/)"
    ], res.stderr[-2000:]


def _memory_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_memory", os.path.join(ROOT, "bench", "memory.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("lora_r", [0, 4])
def test_memory_model_counts_what_backward_keeps(lora_r):
    """bench/memory.py's bytes kept for backward (layer_saved: the RMSNorms' float32 copies, the attention
    kernel's tensors, SwiGLU's, the adapters'; head_saved) equal what torch's saved-tensor hooks count on a
    small LLaDA-shaped model, layer by layer, full fine-tuning and LoRA; the layout counted before (bf16
    norm inputs and outputs, 8·d_model + 4·d_ff numbers) is short of it."""
    memory = _memory_module()
    shape = dict(vocab_size=300, d_model=64, n_layers=3, n_heads=4, d_ff=192, rope_theta=10000.0)
    targets = ("q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out")
    cfg = dict(lora_alpha=8, temperature=0.6, top_k=150, top_p=0.99)
    rows, positions, prompt, read = 2, 20, 12, 3
    _, _, _, adapted, head_r = memory.counts(shape, lora_r, targets)
    model = memory.stand_in(shape, cfg, lora_r, targets)
    _, saved = memory.saved_by_layer(model, memory.draw_forward(model, cfg, rows, positions, prompt, read))
    adapted = adapted if lora_r else {}
    for i in range(shape["n_layers"]):  # the stand-in's embeddings are frozen: the first layer's input needs no grad
        assert saved[i] == memory.layer_saved(shape, rows, positions, lora_r, adapted, frozen_input=i == 0)
    rest = memory.head_saved(shape, rows, positions, read, lora_r, head_r if lora_r else 0, 150, ends_train=False)
    assert saved["rest"] == rest
    h, f = shape["d_model"], shape["d_ff"]
    assert saved[1] > 2 * (8 * h + 4 * f) * rows * positions


def test_every_name_a_bench_script_imports_from_the_project_exists():
    """Each `from x import y` of the project in bench/*.py, at the top or inside a function (a measurement that
    runs only on a GPU or by hand), names something the module has: a rename cannot leave a bench broken."""
    import ast
    import importlib

    own = {os.path.basename(f)[:-3] for f in glob.glob(f"{ROOT}/*.py")} | {"plumbing", "tasks", "tools", "bench"}
    missing = []
    for path in sorted(glob.glob(f"{ROOT}/bench/*.py")):
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module.split(".")[0] in own:
                module = importlib.import_module(node.module)
                missing += [f"{path}: {node.module}.{a.name}" for a in node.names if not hasattr(module, a.name)]
    assert not missing, missing
