"""The embedded base models (sft.py): batch layout, the loss goes down, the script writes a model
folder with its record, and the shipped models/ folders match their recorded checksums and load."""

import glob
import json
import os
import random
import shlex
import sys

import pytest
import torch
import warm

from likelihood import elbo_draws
from plumbing import data
from plumbing.model import load
from tools import sft


def test_sft_batch_layout():
    _, tok = load("tiny")
    items = data.load_items("countdown", "train", None, n=3, seed=0)
    batch = sft.sft_batch(tok, "countdown", items, max_completion_length=16)
    P = batch.prompt_length
    for i, it in enumerate(items):
        prompt = data.build_prompt(tok, "countdown", it, "", True)
        assert (
            batch.ids[i, P - len(prompt) : P].tolist() == prompt
            and batch.attention_mask[i, : P - len(prompt)].sum() == 0
        )
        solution = tok(data.task("countdown").solution(it), add_special_tokens=False).input_ids
        assert batch.ids[i, P : P + len(solution)].tolist() == solution
        assert (batch.ids[i, P + len(solution) :] == tok.eos_token_id).all()  # EOS, then EOS padding


def test_sft_lowers_its_loss():
    model, tok = load("tiny", seed=0)
    items = data.load_items("countdown", "train", None, n=64, seed=0)
    held = sft.sft_batch(tok, "countdown", items[:16], max_completion_length=16)
    draws = elbo_draws(held, 4, torch.Generator().manual_seed(0))

    def loss():
        with torch.no_grad():
            return sft.sft_loss(model, held, draws).item()

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
