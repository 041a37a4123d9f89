"""--fsdp on CPU with gloo ranks: sharded training equals one process, the sampler and no-grad
passes equal the unsharded model's with the weights gathered once, and checkpoints are the usual
folders, resumed bit for bit after kill -9 or SIGTERM."""

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import warm
from safetensors.torch import load_file, save_file
from test_reliability import logged_steps
from test_train import ROOT, SMALL, assert_same, params, run

from plumbing import checkpoint, manifest

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]  # --standalone: a free port
ENV = dict(os.environ, OMP_NUM_THREADS="1")
STEPS = ["--max_steps=6", "--save_steps=2", "--save_total_limit=4", "--eval_items=4"]


def fsdp_run(args, nproc=2):
    cmd = [*TORCHRUN, "--nproc_per_node", str(nproc), "train.py", *SMALL, "--fsdp", *args]
    out = warm.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=ENV)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def log_rows(out_dir):
    return [json.loads(line) for line in open(os.path.join(out_dir, "log.jsonl"))]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    fsdp_run([f"--output_dir={out}", *STEPS])
    return str(out)


def rss_rows(script, tmp_path, name):
    """Each of 2 gloo ranks' row of `script` (a tiny model of width 512, 8 layers), as it wrote {name}{rank}.json."""
    cmd = [*TORCHRUN, "--nproc_per_node", "2", script, str(tmp_path), "512", "8"]
    env = dict(ENV, MALLOC_MMAP_THRESHOLD_="131072")  # a freed tensor leaves the RSS (no heap kept by malloc)
    out = warm.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return [json.load(open(tmp_path / f"{name}{r}.json")) for r in range(2)]


def test_rollouts_and_no_grad_draws_under_sharding(tmp_path):
    """Threshold decoding (ranks take different numbers of forwards), a KV-cached rollout of a block
    model and the no-grad log-probs of draws, on a sharded model (the shipped base and block base): the
    same tokens and log-probs as the unsharded model, each sharded module's weights gathered once. And
    the mixed-precision policy of CUDA runs keeps float32 weights and gradients and computes in bf16."""
    models = ["models/tiny-countdown", "models/tiny-countdown-block"]
    cmd = [*TORCHRUN, "--nproc_per_node", "2", "tests/fsdp_ranks.py", str(tmp_path), *models]
    out = warm.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV)
    assert out.returncode == 0, out.stderr[-3000:]
    ranks = [json.load(open(tmp_path / f"rank{r}.json")) for r in range(2)]
    for m in range(len(models)):
        for r in (ranks[0][m], ranks[1][m]):
            assert r["tokens_equal"] and r["fixed_equal"] and r["logp_diff"] <= 1e-6 and r["draws_diff"] <= 1e-6, r
            assert r["all_gathers"] == r["sharded_modules"] >= 3, r  # root and each block, once
        assert ranks[0][m]["forwards"] != ranks[1][m]["forwards"]  # the ranks ran different numbers of forwards
    for r in (ranks[0][-1], ranks[1][-1]):  # CUDA's policy: float32 master weights and gradients, bf16 compute
        assert (r["weights"], r["grads"], r["compute"]) == ("torch.float32", "torch.float32", "torch.bfloat16"), r
        assert 0 < r["diff"] < 0.5, r


def test_sharded_loading_reads_the_weights_on_rank_0_only(tmp_path):
    """--fsdp's loading (rank 0 reads the weights; each rank builds the model on the meta device, shards it
    and receives its part) gives every rank the parts, buffers (one outside the state dict), reference copy,
    RNG state and load-time facts that loading the whole model on every rank gave, bit for bit: the embedded
    model, with its head tied to its embeddings and a model folder, full fine-tuning at β > 0 and LoRA; and
    CUDA's float32 master weights of a model built in bf16. No rank holds a real weight when it shards;
    only rank 0 loads the whole model, and for full fine-tuning of a model folder not even rank 0: the
    weights are streamed from its safetensors files."""
    models = ["tiny", "tiny_tied", "models/tiny-countdown"]
    cmd = [*TORCHRUN, "--nproc_per_node", "2", "tests/fsdp_loading.py", str(tmp_path), *models]
    out = warm.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV)
    assert out.returncode == 0, out.stderr[-3000:]
    ranks = [json.load(open(tmp_path / f"rank{r}.json")) for r in range(2)]
    for rank, rows in enumerate(ranks):
        for row, (name, setting) in zip(rows, [(m, s) for m in models for s in ("full", "lora")]):
            assert row["policy_equal"] and row["ref_equal"] and row["logits_equal"], (rank, name, setting, row)
            assert row["rng_equal"] and row["facts_equal"], (rank, name, setting, row)
            assert row["ref_is_policy"] == (setting == "lora"), row
            assert row["buffers"] == (["inv_freq", "scale"] if name.startswith("tiny") else []), row
            assert row["head_tied"] == (name == "tiny_tied"), row
            # a model folder's weights, full fine-tuning: streamed from rank 0 a tensor at a time, never loaded whole
            streamed = name == "models/tiny-countdown" and setting == "full"
            assert row["bytes_at_shard"] == 0 and row["whole_loads"] == (rank == 0 and not streamed), row
            assert row["local_bytes"] * 2 == row["whole_bytes"], row  # each rank holds its half
        assert rows[-1] == {"float32_equal": True, "dtypes": ["torch.float32"]}, rows[-1]


def test_fsdp_streamed_loading_holds_no_whole_model(tmp_path):
    """--fsdp's full fine-tuning at β > 0 of a model folder (33.7 M parameters, 135 MB) on 2 ranks: the weights
    streamed from rank 0's safetensors file a tensor at a time give the policy and reference parts, and the
    weights' digest, that rank 0 loading the whole model gave; each rank keeps its halves of both (the whole's
    bytes in all), and above them no rank's host memory rises by more than 0.65× the whole (measured 0.41× on
    rank 0, 0.53× on rank 1: a tensor at a time, and the probing forwards' gathered layers), where rank 0
    loading it whole rose 1.02× above them."""
    for r, row in enumerate(rss_rows("tests/loading_rss.py", tmp_path, "load")):
        assert row["same"] and row["same_digest"] and 0.45 < row["own"] / row["whole"] < 0.55, row
        kept = 2 * row["own"]  # its halves of the policy and of the reference
        assert row["streamed"] - kept < 0.65 * row["whole"], row
        if r == 0:
            assert row["rank0_whole"] - kept > 0.9 * row["whole"], row


@pytest.mark.parametrize(
    "extra",
    [
        [],
        ["--lora_r=4", "--lora_alpha=8", "--beta=0.04", "--gradient_checkpointing"],
        # greedy rollouts: a group's completions are alike, so every row of a step is left out on both ranks
        ["--unmasking=threshold", "--estimator=elbo", "--temperature=0"],
    ],
    ids=["full", "lora", "threshold-elbo"],
)
def test_fsdp_two_ranks_equal_one_process(tmp_path, uninterrupted, extra):
    """2 sharded ranks × 1 micro-batch == 1 process × 2 accumulated micro-batches: the same rollouts and
    rewards, losses and weights to float tolerance, in the same checkpoint folders."""
    one, two = f"{tmp_path}/one", uninterrupted if not extra else f"{tmp_path}/two"
    run([f"--output_dir={one}", *STEPS, "--gradient_accumulation_steps=2", *extra])
    if extra:
        fsdp_run([f"--output_dir={two}", *STEPS, *extra])
    assert_same(params(f"{one}/checkpoint-6"), params(f"{two}/checkpoint-6"), atol=2e-5)
    a, b = log_rows(one), log_rows(two)
    assert [r["reward"] for r in a] == pytest.approx([r["reward"] for r in b], rel=1e-6)  # means in another order
    for key in ("loss", "grad_norm", "kl", "ratio_dev"):
        assert [r[key] for r in a] == pytest.approx([r[key] for r in b], rel=1e-4, abs=1e-6), key
    # the sharded run's checkpoint: the same folder, its tensors and optimizer state in each rank's own file
    files = [set(os.listdir(f"{run_dir}/checkpoint-6")) for run_dir in (one, two)]
    assert files[1] - files[0] == {".metadata", "__0_0.distcp", "__1_0.distcp"}, files
    assert not any(f.endswith(".safetensors") for f in files[1]) and "optimizer.pt" in files[1]
    if "--estimator=elbo" in extra:  # no rank trains on a row, yet AdamW steps on zero gradients as one process does
        assert any(r["frac_rows_left_out"] == 1.0 for r in b)
    if not extra:
        # a step where one rank had no rows to train on: it ran the other's passes with zero loss
        assert any(r["frac_rows_left_out"] == 0.5 for r in b)


def test_fsdp_checkpoints_export_and_evaluate(tmp_path, uninterrupted):
    """export.py and eval.py take a sharded run's checkpoint as they take any other."""
    out = warm.run(
        [sys.executable, "tools/export.py", uninterrupted, f"{tmp_path}/export"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    exported = load_file(f"{tmp_path}/export/model.safetensors")  # a model folder: no checkpoint manifest
    assert_same(params(f"{uninterrupted}/checkpoint-6"), exported, atol=0)
    assert json.load(open(f"{tmp_path}/export/config.json"))["architectures"] == ["TinyLLaDAModel"]
    cmd = [sys.executable, "eval.py", f"--models=('{uninterrupted}',)", "--labels=()", "--eval_items=4"]
    out = warm.run(
        cmd + [f"--output_dir={tmp_path}/eval"], cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV
    )
    assert out.returncode == 0 and "checkpoint-6" in out.stdout + out.stderr, out.stderr[-2000:]


def kill_every_process(proc):
    """SIGKILL to torchrun and its ranks, and wait until they are gone: each rank runs in a session of its
    own, which a signal to torchrun's process group does not reach (the ranks would go on training)."""
    ranks = [int(pid) for pid in open(f"/proc/{proc.pid}/task/{proc.pid}/children").read().split()]
    os.killpg(proc.pid, signal.SIGKILL)
    for pid in ranks:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()
    alive = lambda pid: os.path.exists(f"/proc/{pid}") and open(f"/proc/{pid}/stat").read().split()[2] != "Z"  # noqa: E731
    while any(alive(pid) for pid in ranks):
        time.sleep(0.05)
    return ranks


def test_fsdp_sigkill_then_resume_is_bit_exact(tmp_path, uninterrupted):
    """kill -9 of every process at a random moment; the resume ends where the uninterrupted run did."""
    cmd = [*TORCHRUN, "--nproc_per_node", "2", "train.py", *SMALL, "--fsdp", f"--output_dir={tmp_path}", *STEPS]
    proc = warm.Popen(
        cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, start_new_session=True
    )
    deadline = time.time() + 300
    while not os.path.exists(f"{tmp_path}/log.jsonl") and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(random.Random(0).uniform(0.0, 1.0))
    assert len(kill_every_process(proc)) == 2
    out = fsdp_run([f"--output_dir={tmp_path}", *STEPS, "--resume_from_checkpoint"])
    assert_same(params(f"{uninterrupted}/checkpoint-6"), params(f"{tmp_path}/checkpoint-6"), atol=0)
    assert logged_steps(tmp_path) == list(range(1, 7))
    # both ranks take the accuracy before training from the checkpoint resumed, or both measure it (none yet)
    assert json.load(open(f"{tmp_path}/final.json")) == json.load(open(f"{uninterrupted}/final.json"))
    resumed = "resumed from " in out.stdout
    assert resumed != ("starting fresh" in out.stdout), out.stdout[-2000:]
    assert ("(measured at the start of the run" in out.stdout) == resumed, out.stdout[-2000:]


def test_fsdp_sigkill_while_writing_a_checkpoint(tmp_path, uninterrupted):
    """Rank 0 killed halfway through writing checkpoint-4 (tests/faults.py under torchrun): the
    half-written folder is never taken for a checkpoint and the resume ends bit-identical."""
    cmd = [*TORCHRUN, "--nproc_per_node", "2", "tests/faults.py", "kill_in_save=4", "--", *SMALL, "--fsdp"]
    out = warm.run(
        [*cmd, f"--output_dir={tmp_path}", *STEPS], cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV
    )
    assert out.returncode != 0 and os.path.exists(f"{tmp_path}/checkpoint-4.tmp"), out.stderr[-2000:]
    assert checkpoint.names(str(tmp_path)) == ["checkpoint-2"]
    fsdp_run([f"--output_dir={tmp_path}", *STEPS, "--resume_from_checkpoint"])
    assert_same(params(f"{uninterrupted}/checkpoint-6"), params(f"{tmp_path}/checkpoint-6"), atol=0)
    assert not any(f.endswith(".tmp") for f in os.listdir(tmp_path)) and logged_steps(tmp_path) == list(range(1, 7))


def test_fsdp_kill_while_a_shard_write_is_in_flight(tmp_path, uninterrupted):
    """The shards of checkpoint-4 are written in the background (tests/faults.py holds that write open): training
    goes on to step 5 meanwhile, and a kill -9 then leaves checkpoint-4.tmp, without its manifest, never taken
    for a checkpoint; the resume from checkpoint-2 ends bit-identical to the uninterrupted run (whose
    checkpoints were written in the background too)."""
    cmd = [*TORCHRUN, "--nproc_per_node", "2", "tests/faults.py", "hold_shard_write=4", "--", *SMALL, "--fsdp"]
    proc = warm.Popen(
        [*cmd, f"--output_dir={tmp_path}", *STEPS],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ENV,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while (
        time.time() < deadline
        and proc.poll() is None
        and not (os.path.exists(f"{tmp_path}/log.jsonl") and len(logged_steps(tmp_path)) >= 5)
    ):
        time.sleep(0.05)
    steps = logged_steps(tmp_path)
    assert steps[:5] == [1, 2, 3, 4, 5], steps  # step 5 (and maybe 6) ran while checkpoint-4 was being written
    assert len(kill_every_process(proc)) == 2
    assert checkpoint.names(str(tmp_path)) == ["checkpoint-2"]
    assert "checksums.json" not in os.listdir(f"{tmp_path}/checkpoint-4.tmp")
    fsdp_run([f"--output_dir={tmp_path}", *STEPS, "--resume_from_checkpoint"])
    assert_same(params(f"{uninterrupted}/checkpoint-6"), params(f"{tmp_path}/checkpoint-6"), atol=0)
    assert not any(f.endswith(".tmp") for f in os.listdir(tmp_path)) and logged_steps(tmp_path) == list(range(1, 7))


def test_fsdp_a_weights_file_of_another_shape_stops_in_one_line(tmp_path):
    """A model folder whose safetensors holds a tensor of another shape than the model's is not streamed (a
    rank 0 traceback while the others wait in a broadcast): the whole load refuses it in one line."""
    folder = tmp_path / "model"
    shutil.copytree(os.path.join(ROOT, "models", "tiny-countdown"), folder, ignore=shutil.ignore_patterns("sft.json"))
    weights = load_file(folder / "model.safetensors")
    weights["model.transformer.blocks.0.ff_out.weight"] = weights["model.transformer.blocks.0.ff_out.weight"][:-1]
    save_file({k: v.contiguous() for k, v in weights.items()}, folder / "model.safetensors", metadata={"format": "pt"})
    cmd = [*TORCHRUN, "--nproc_per_node", "2", "train.py", *SMALL, "--fsdp", f"--model_name_or_path={folder}"]
    out = warm.run(
        [*cmd, f"--output_dir={tmp_path}/run"], cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV
    )
    ranks = "\n".join(line for line in out.stderr.splitlines() if line.startswith("[rank"))  # torchrun's report aside
    assert out.returncode != 0 and "Traceback" not in ranks, out.stderr[-3000:]
    assert f"config error: --model_name_or_path: cannot load model '{folder}'" in out.stderr, out.stderr[-3000:]


def test_fsdp_nonfinite_weights_stop_after_the_checkpoint_being_written_is_finished(tmp_path):
    """Under FSDP a checkpoint's shards are still being written when the next step leaves a weight infinite: the
    stop finishes that write first, so the checkpoint it names is a whole one (not a .tmp a resume discards)."""
    cmd = [*TORCHRUN, "--nproc_per_node", "2", "tests/faults.py", "inf_weights_at=3", "--", *SMALL, "--fsdp"]
    cmd += [f"--output_dir={tmp_path}", "--max_steps=5", "--save_steps=2"]
    out = warm.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=ENV)
    assert out.returncode != 0 and "stopping at step 3: the weights are not finite" in out.stderr, out.stderr[-2000:]
    assert f"Last checkpoint: {tmp_path}/checkpoint-2." in out.stderr, out.stderr[-2000:]
    assert checkpoint.names(str(tmp_path)) == ["checkpoint-2"] and not any(
        f.endswith(".tmp") for f in os.listdir(tmp_path)
    )


def test_fsdp_sigterm_saves_the_last_finished_step(tmp_path, uninterrupted):
    """A cluster's SIGTERM to torchrun mid-step: every rank finishes the step, the checkpoint of that
    step is gathered and written (none was due), and the resume finishes bit for bit."""
    cmd = [*TORCHRUN, "--nproc_per_node", "2", "train.py", *SMALL, "--fsdp", f"--output_dir={tmp_path}"]
    cmd += ["--max_steps=6", "--save_steps=100"]
    proc = warm.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.time() + 300
    while time.time() < deadline and not (os.path.exists(f"{tmp_path}/log.jsonl") and len(logged_steps(tmp_path)) >= 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=300)[1]
    done = logged_steps(tmp_path)[-1]
    assert f"stopped by SIGTERM after step {done}: checkpoint {tmp_path}/checkpoint-{done}" in err, err[-2000:]
    assert 2 <= done < 6 and checkpoint.names(str(tmp_path)) == [f"checkpoint-{done}"]
    fsdp_run([f"--output_dir={tmp_path}", *STEPS, "--resume_from_checkpoint"])
    assert_same(params(f"{uninterrupted}/checkpoint-6"), params(f"{tmp_path}/checkpoint-6"), atol=0)


@pytest.mark.parametrize("sharded", [["--fsdp"], []], ids=["fsdp", "ddp"])
def test_sigterm_in_a_rollout_that_never_ends_saves_the_last_finished_step(tmp_path, uninterrupted, sharded):
    """The second step's rollout never ends (tests/faults.py); once every rank is inside it, torchrun gets
    SIGTERM: the rollouts stop where they stand, every rank agrees, and the checkpoint of the last finished
    step is written before torchrun's SIGKILL (had a rank waited for its rollout, no checkpoint would come:
    nothing here depends on how fast the machine is); the resume ends where the uninterrupted run did."""
    faults = ["tests/faults.py", f"hang_rollouts=(1, {str(tmp_path / 'in_rollout')!r})", "--", *SMALL, *sharded]
    cmd = [*TORCHRUN, "--shutdown_timeout", "60", "--nproc_per_node", "2", *faults, f"--output_dir={tmp_path}", *STEPS]
    proc = warm.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.time() + 300
    while (
        time.time() < deadline
        and proc.poll() is None
        and not all(os.path.exists(tmp_path / f"in_rollout.{r}") for r in range(2))
    ):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=300)[1]
    assert f"stopped by SIGTERM after step 1: checkpoint {tmp_path}/checkpoint-1" in err, err[-2000:]
    assert checkpoint.names(str(tmp_path)) == ["checkpoint-1"] and logged_steps(tmp_path) == [1]
    if sharded:  # DDP's steps are FSDP's to float tolerance only; the resume is compared under FSDP
        fsdp_run([f"--output_dir={tmp_path}", *STEPS, "--resume_from_checkpoint"])
        assert_same(params(f"{uninterrupted}/checkpoint-6"), params(f"{tmp_path}/checkpoint-6"), atol=0)


def test_fsdp_checkpoint_is_each_ranks_own_shards(tmp_path, uninterrupted, monkeypatch):
    """Each rank wrote its own file, about half the trained tensors and AdamW moments (never the whole), and
    checksums.json lists each: a damaged shard, or a shard file dropped in that it does not list, is refused.
    A resume's ranks each hash their part of the files, and all take a problem one of them found."""
    path = f"{uninterrupted}/checkpoint-6"
    state, listed = json.load(open(f"{path}/trainer_state.json")), json.load(open(f"{path}/checksums.json"))
    assert state["layout"] == "sharded" and {".metadata", "__0_0.distcp", "__1_0.distcp"} <= listed.keys()
    whole = sum(t.numel() * t.element_size() for t in params(path).values()) * 3  # weights + exp_avg + exp_avg_sq
    sizes = [os.path.getsize(f"{path}/__{r}_0.distcp") for r in range(2)]
    assert all(0.3 * whole < size < 0.7 * whole for size in sizes) and sum(sizes) >= whole, (sizes, whole)
    damaged = shutil.copytree(path, tmp_path / "checkpoint-6")
    with open(damaged / "__1_0.distcp", "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(checkpoint.ConfigError, match="__1_0.distcp is damaged"):
        checkpoint.read(str(damaged), with_tensors=True)
    extra = shutil.copytree(path, tmp_path / "extra" / "checkpoint-6")
    shutil.copy(extra / "__1_0.distcp", extra / "__2_0.distcp")
    with pytest.raises(checkpoint.ConfigError, match="__2_0.distcp is not one of the files"):
        checkpoint.read(str(extra), with_tensors=True)
    hashed, real = [], manifest.sha256
    monkeypatch.setattr(manifest, "sha256", lambda file: hashed.append(os.path.basename(file)) or real(file))
    shared = str(shutil.copytree(path, tmp_path / "shared" / "checkpoint-6"))
    assert manifest.damaged_files(shared, (1, 2), lambda problem: problem) is None
    assert hashed == sorted(listed)[1::2] and "__0_0.distcp" in hashed  # rank 1's half of the files only
    assert manifest.damaged_files(str(damaged), (0, 2), lambda problem: "rank 1's") == "rank 1's"


def test_fsdp_resume_passes_over_a_damaged_shard(tmp_path, uninterrupted):
    """The ranks share the hashing of a sharded checkpoint (each its part of the files) and agree: a damaged
    shard of the newest is found whichever rank hashed it, every rank passes over it, and the resume from the
    one before ends bit for bit where the uninterrupted run did."""
    shutil.copytree(uninterrupted, tmp_path / "run", ignore=shutil.ignore_patterns(".lock", "checkpoint-6"))
    for name in ("__0_0.distcp", "__1_0.distcp"):  # one in each rank's part of the sorted file names
        with open(tmp_path / "run" / "checkpoint-4" / name, "r+b") as f:
            f.seek(100)
            byte = f.read(1)
            f.seek(100)
            f.write(bytes([byte[0] ^ 1]))
        out = fsdp_run([f"--output_dir={tmp_path}/run", *STEPS, "--resume_from_checkpoint"])
        assert f"{name} is damaged" in out.stdout and "(step 2)" in out.stdout, out.stdout[-2000:]
        assert_same(params(f"{uninterrupted}/checkpoint-6"), params(f"{tmp_path}/run/checkpoint-6"), atol=0)
        shutil.rmtree(tmp_path / "run")
        shutil.copytree(uninterrupted, tmp_path / "run", ignore=shutil.ignore_patterns(".lock", "checkpoint-6"))


def test_fsdp_no_rank_holds_the_whole_model_at_save_or_resume(tmp_path):
    """train.py's save and resume of a sharded model (33.6 M parameters, 415 MB with AdamW's moments) on 2
    ranks: no rank's host memory rises by the whole trained tensors and moments (writing them whole from rank 0
    rose 1.09× of it there, reading them whole on every rank 1.6×); the resumed weights are those saved, though
    the weights changed while the write went on."""
    for row in rss_rows("tests/checkpoint_rss.py", tmp_path, "rss"):
        # a save's start: one copy of its own pieces (half the whole on 2 ranks), which the background write
        # writes from while training changes the tensors (a write from the tensors themselves rose < 0.25× the
        # whole); the write: its file's buffers; a resume: its own AdamW moments (2/3 of its half) and the
        # pieces read into them. The checkpoint holds the weights as they were when the save began.
        assert row["restored"] and row["own"] * 2 == row["whole"], row
        assert row["save"] < 1.1 * row["own"] and row["write"] < 0.25 * row["whole"], row
        assert row["resume"] < 0.75 * row["whole"], row


def test_fsdp_resumes_on_another_number_of_ranks(tmp_path, uninterrupted):
    """A sharded checkpoint is resharded on resume (each rank reads the pieces of its own shards): one rank
    continues a run of two when it runs both micro-batches of a step, and two ranks a run of one (the same
    prompts and draws; sums in another order, so equal to float tolerance); one rank is refused in one line
    when it would run only one micro-batch of the two."""
    shutil.copytree(uninterrupted, tmp_path / "run", ignore=shutil.ignore_patterns(".lock", "checkpoint-6"))
    cmd = [*TORCHRUN, "--nproc_per_node", "1", "train.py", *SMALL, "--fsdp", f"--output_dir={tmp_path}/run", *STEPS]
    out = warm.run([*cmd, "--resume_from_checkpoint"], cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV)
    assert out.returncode != 0 and "trained on 2 ranks × --gradient_accumulation_steps=1, this run has 1 × 1" in (
        out.stderr
    ), out.stderr[-2000:]
    fsdp_run(
        [f"--output_dir={tmp_path}/run", *STEPS, "--resume_from_checkpoint", "--gradient_accumulation_steps=2"], nproc=1
    )
    assert_same(params(f"{uninterrupted}/checkpoint-6"), params(f"{tmp_path}/run/checkpoint-6"), atol=2e-5)
    # 1 -> 2: a run of one rank (its checkpoint one shard file), continued from step 4 by two
    fsdp_run([f"--output_dir={tmp_path}/one", *STEPS, "--gradient_accumulation_steps=2"], nproc=1)
    assert "__1_0.distcp" not in os.listdir(f"{tmp_path}/one/checkpoint-4")
    shutil.copytree(f"{tmp_path}/one", tmp_path / "two", ignore=shutil.ignore_patterns(".lock", "checkpoint-6"))
    out = fsdp_run([f"--output_dir={tmp_path}/two", *STEPS, "--resume_from_checkpoint"])
    assert "(step 4)" in out.stdout and "checkpoints: ~0.0" in out.stdout, out.stdout[-2000:]
    assert_same(params(f"{uninterrupted}/checkpoint-6"), params(f"{tmp_path}/two/checkpoint-6"), atol=2e-5)
    assert_same(params(f"{tmp_path}/one/checkpoint-6"), params(f"{tmp_path}/two/checkpoint-6"), atol=2e-5)


def test_fsdp_outside_torchrun_stops_with_one_line(tmp_path):
    cmd = [sys.executable, "train.py", *SMALL, "--fsdp", f"--output_dir={tmp_path}"]
    out = warm.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "--fsdp runs under torchrun" in out.stderr.strip().splitlines()[-1]


def test_a_stop_on_rank_0_ends_the_other_ranks_without_a_traceback(tmp_path):
    """Under torchrun, rank 0's one-line stop (a folder that cannot hold the run, a model that cannot load)
    ends rank 1, which waits on it in a collective, with no traceback of ours: only torchrun's own report."""
    (tmp_path / "a_file").write_text("")
    for args in ([f"--output_dir={tmp_path}/a_file"], ["--model_name_or_path=models/no_such_model"]):
        cmd = [*TORCHRUN, "--nproc_per_node", "2", "train.py", *SMALL, "--max_steps=1", "--eval_items=0", *args]
        out = warm.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV)
        ours = [  # a frame of the project's own files (not torchrun's, wherever its environment lives)
            line
            for line in out.stderr.splitlines()
            if ('File "' + ROOT in line and "site-packages" not in line) or "closed by peer" in line
        ]
        assert out.returncode != 0 and "config error: " in out.stderr and not ours, out.stderr[-3000:]


@pytest.mark.parametrize("how, status", [("ok", 0), ("exit-3", 3), ("message", 1), ("error", 1)])
def test_a_rank_ends_with_pythons_status_and_no_abort(how, status):
    """A rank whose last collective's tensor gloo's thread frees while the interpreter would be torn down (a
    sharded model holds the destroyed group) aborted in about 8 runs of 10 ("terminate called without an
    active exception", SIGABRT): under ddp.rank_end it exits with the status Python gives how main() ended."""
    cmd = [*TORCHRUN, "--nproc_per_node", "2", "tests/rank_end.py", how]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV)
    assert "terminate called" not in out.stderr and "SIGABRT" not in out.stderr, out.stderr[-2000:]
    assert out.returncode == (0 if status == 0 else 1), out.stderr[-2000:]  # torchrun: 1 when a rank fails
    if status:  # torchrun names the failed rank's own status
        assert f"exitcode  : {status} " in out.stderr, out.stderr[-2000:]
    if how == "ok":
        assert out.stdout.count("done") == 2
    if how == "message":  # the first rank to fail may be the only one: torchrun then stops the other
        assert "stopped: a one-line reason" in out.stderr
    if how == "error":
        assert "ValueError: a bug" in out.stderr
