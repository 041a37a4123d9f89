"""The embedded base models (tools/sft.py): batch layout, the loss is likelihood.py's ELBO estimator on the same
masks to the bit, it goes down, the script writes a model folder with its record, and the shipped models/ folders
match their recorded checksums and load."""

import glob
import json
import os
import random
import shlex
import sys

import pytest
import torch
import warm

from likelihood import Draws, draws_logp, elbo_draws
from plumbing import data
from plumbing.model import load
from sample import Rollout
from tools import sft


def test_sft_batch_layout():
    _, tok = load("tiny")
    items = data.load_items("countdown", "train", None, n=3, seed=0)
    ids, attention_mask, P = sft.sft_batch(tok, "countdown", items, max_completion_length=16)
    assert ids.shape[1] == P + 16 and (attention_mask[:, P:] == 1).all()
    for i, it in enumerate(items):
        prompt = data.build_prompt(tok, "countdown", it, "", True)
        assert ids[i, P - len(prompt) : P].tolist() == prompt and attention_mask[i, : P - len(prompt)].sum() == 0
        assert (attention_mask[i, P - len(prompt) :] == 1).all()
        solution = tok(data.task("countdown").solution(it), add_special_tokens=False).input_ids
        assert ids[i, P : P + len(solution)].tolist() == solution
        assert (ids[i, P + len(solution) :] == tok.eos_token_id).all()  # EOS, then EOS padding


@pytest.mark.parametrize("name", ["tiny", "tiny_shifted", "tiny_block"])
def test_sft_loss_is_the_elbo_estimator_on_the_same_masks(name):
    """tools/sft.py computes its loss on its own; on the same generator it draws likelihood.elbo_draws' masks and
    weights, and its loss and gradient are the estimator's value (G/l-weighted Σ log p over G, read as
    likelihood.draws_logp reads it: on a block model the packed copies) bit for bit. The block model gets a row
    too whose first blocks hold no masked position (its copies skip them)."""
    model, tok = load(name, seed=0)
    batch = sft.sft_batch(
        tok, "countdown", data.load_items("countdown", "train", None, n=12, seed=1), max_completion_length=16
    )
    ids, attention_mask, P = batch
    x, masked, weight = sft.mask_completions(batch, tok.mask_token_id, torch.Generator().manual_seed(3))
    zeros = torch.zeros(masked.shape)
    rollout = Rollout(ids, attention_mask, P, zeros.long(), zeros, zeros, 16, tok.mask_token_id, tuple(tok.eos_ids))
    draws = elbo_draws(rollout, 1, torch.Generator().manual_seed(3))
    assert torch.equal(draws.x[0], x) and torch.equal(draws.read[0], masked) and torch.equal(draws.weight[0], weight)
    x1, masked1 = x.clone(), masked.clone()
    x1[0, P:-1], masked1[0, :-1] = ids[0, P:-1], False  # row 0: only its last position masked
    x1[0, -1], masked1[0, -1] = tok.mask_token_id, True
    for noisy, read in [(x, masked), (x1, masked1)]:
        draws = Draws(noisy[None], read[None], weight[None], torch.full((12,), 16.0), truncate=False)
        expected = -(draws.weight[..., None] * draws_logp(model, rollout, draws)).sum() / read.numel()
        expected_grad = torch.autograd.grad(expected, list(model.parameters()), allow_unused=True)
        loss = sft.sft_loss(model, batch, (noisy, read, weight), tok.mask_token_id)
        grad = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
        assert torch.equal(loss, expected)
        assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(grad, expected_grad))


def test_sft_lowers_its_loss():
    model, tok = load("tiny", seed=0)
    items = data.load_items("countdown", "train", None, n=64, seed=0)
    held = sft.sft_batch(tok, "countdown", items[:16], max_completion_length=16)
    masks = [sft.mask_completions(held, tok.mask_token_id, torch.Generator().manual_seed(s)) for s in range(4)]

    def loss():
        with torch.no_grad():
            return sum(sft.sft_loss(model, held, m, tok.mask_token_id).item() for m in masks) / len(masks)

    before = loss()
    model, _ = sft.train(
        model,
        tok,
        "countdown",
        items,
        max_steps=60,
        lr=2e-3,
        batch_size=16,
        max_completion_length=16,
        rng=random.Random(0),
        generator_for_step=lambda s: torch.Generator().manual_seed(s),
        show=False,
    )
    assert loss() < 0.7 * before
    assert all(p.grad is None for p in model.parameters())  # nothing left to leak into AGRPO's first step


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = sorted(glob.glob(os.path.join(ROOT, "models", "*", "sft.json")))


def test_models_are_shipped():
    assert {os.path.basename(os.path.dirname(p)) for p in SHIPPED} >= {
        "tiny-countdown",
        "tiny-sudoku",
        "tiny-countdown-block",
    }


@pytest.mark.parametrize("record", SHIPPED, ids=lambda p: os.path.basename(os.path.dirname(p)))
def test_shipped_model_matches_its_checksum_and_loads(record):
    """The file is the one its record names (a changed or LFS-pointer file fails here), and loads
    from any working directory by its models/ name, as train.py's default does."""
    folder = os.path.dirname(record)
    meta = json.load(open(record))
    assert sft.sha256(os.path.join(folder, "model.safetensors")) == meta["model.safetensors sha256"]
    assert (meta["command"].startswith("python tools/sft.py ") or meta["command"] == "python tools/sft.py") and meta[
        "config"
    ]["output_dir"] == f"models/{os.path.basename(folder)}"
    table = {}  # models/README.md's table: folder -> its command
    for line in open(os.path.join(ROOT, "models", "README.md")):
        if line.startswith("| `tiny-"):
            cells = [c.strip() for c in line.split("|")]
            table[cells[1].strip("`")] = shlex.split(cells[3].strip("`"))
    assert table[os.path.basename(folder)] == shlex.split(meta["command"])
    here = os.getcwd()
    try:
        os.chdir("/")
        model, tok = load(f"models/{os.path.basename(folder)}")
    finally:
        os.chdir(here)
    assert model.config.vocab_size == len(tok) and tok.mask_token_id is not None


def test_sft_help_names_every_embedded_model():
    """models/README.md builds tiny-countdown-block with --model_name_or_path=tiny_block: --help says it may."""
    from plumbing.model import EMBEDDED

    out = warm.run([sys.executable, "tools/sft.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    line = next(x for x in out.stdout.splitlines() if x.startswith("  --model_name_or_path"))
    assert all(name in line for name in EMBEDDED), line


def test_sft_script_writes_a_model_folder_and_its_record(tmp_path):
    out = f"{tmp_path}/m"
    cmd = [sys.executable, "tools/sft.py", "--max_steps=3", "--batch_size=8", f"--output_dir={out}"]
    res = warm.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1")
    )
    assert res.returncode == 0, res.stderr[-2000:]
    meta = json.load(open(f"{out}/sft.json"))
    assert meta["config"]["max_steps"] == 3 and meta["model.safetensors sha256"] == sft.sha256(
        f"{out}/model.safetensors"
    )
    load(out)
    bad = warm.run(
        [sys.executable, "tools/sft.py", "--task=gsm8k"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert (
        bad.returncode != 0
        and "--task='gsm8k' must be one of countdown | sudoku" in bad.stderr
        and len(bad.stderr.strip().splitlines()) == 1
    )


def test_the_shipped_models_run_the_root_modeling_file():
    """Every shipped model folder carries tiny_llada.py byte for byte: `python train.py` loads the folder's
    copy through auto_map, so the file a reader reads is the code that runs."""
    root = open(os.path.join(ROOT, "plumbing", "tiny_llada.py"), "rb").read()
    folders = [f for f in sorted(os.listdir(os.path.join(ROOT, "models"))) if f.startswith("tiny-")]
    assert len(folders) == 3
    for folder in folders:
        assert open(os.path.join(ROOT, "models", folder, "tiny_llada.py"), "rb").read() == root, folder
