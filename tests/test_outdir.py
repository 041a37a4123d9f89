"""The folders the scripts write (plumbing/outdir.py): each is checked before any heavy work, nothing a script
did not write is deleted, whole outputs are written all or nothing, a changed shipped model is refused, and an
empty --base_model= is refused."""

import errno
import json
import os
import shutil
import sys

import pytest
import torch
import warm

import eval as eval_script
from plumbing import checkpoint, manifest, model, model_names, outdir, restore
from plumbing.eval_settings import eval_settings
from plumbing.lifecycle import claim as claim_run
from sample import check_settings
from tools import export

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, OMP_NUM_THREADS="1")
UNWRITABLE = "/sys/no-folder-can-be-made-here/out"  # sysfs: mkdir fails for every user, root included


def one_line(cmd, cwd=ROOT):
    out = warm.run([sys.executable, *cmd], cwd=cwd, capture_output=True, text=True, timeout=300, env=ENV)
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr[-2000:]  # nothing else: no training (its progress bar) before it
    return lines[0]


@pytest.mark.parametrize("whole", [False, True])
def test_claim_refuses_every_folder_it_cannot_or_must_not_write(tmp_path, monkeypatch, whole):
    (tmp_path / "a_file").write_text("")
    monkeypatch.chdir(tmp_path)
    cases = {
        "": "is empty",
        ".": "it is the working folder",
        "..": "it is the working folder or holds it",
        ROOT: "it is the repository",
        "a_file": "it is a file",
        os.path.join(ROOT, "models"): "it is in models/",
        os.path.join(ROOT, "models", "tiny-countdown"): "it is in models/",
        os.path.join(ROOT, "models", "new"): "it is in models/",
        UNWRITABLE: "cannot hold the run (",
    }
    for path, words in cases.items():
        with pytest.raises(SystemExit, match="config error: ") as e:
            outdir.claim(path, "the run", whole=whole)
        assert words in str(e.value) and "\n" not in str(e.value), (path, str(e.value))
    assert outdir.claim("fresh", "the run", whole=whole) == "fresh"
    assert sorted(os.listdir(tmp_path)) == (["a_file"] if whole else ["a_file", "fresh"])  # whole: made at the end
    monkeypatch.setattr(outdir.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 << 20, 10 << 20, 1 << 20))
    with pytest.raises(SystemExit, match=r"cannot hold the run \(1 MiB free on its disk, 2 MiB needed\)"):
        outdir.claim("other", "the run", whole=whole, need_bytes=2 << 20)


def test_a_whole_output_replaces_only_a_folder_of_its_kind(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoint-1").mkdir(parents=True)
    (run / "log.jsonl").write_text("{}\n")
    for path in (run, tmp_path / "empty"):
        path.mkdir(exist_ok=True)
        with pytest.raises(SystemExit, match="it exists: choose a new folder"):
            outdir.claim(str(path), "the model", whole=True, replaces="sft.json")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "sft.json").write_text("{}")
    assert outdir.claim(str(tmp_path / "m"), "the model", whole=True, replaces="sft.json")
    assert sorted(os.listdir(run)) == ["checkpoint-1", "log.jsonl"]
    shipped = os.path.join(ROOT, "models", "tiny-countdown")  # tools/sft.py's rebuild of a shipped model
    assert outdir.claim(shipped, "the model", whole=True, replaces="sft.json", may_ship=True) == shipped
    for path in (os.path.join(shipped, "inner"), os.path.join(ROOT, "models")):
        with pytest.raises(SystemExit, match="it is in models/"):
            outdir.claim(path, "the model", whole=True, replaces="sft.json", may_ship=True)
    with pytest.raises(SystemExit, match="it exists"):  # asked to replace, but not a folder this script wrote
        outdir.claim(os.path.join(ROOT, "tools"), "the model", whole=True, replaces="sft.json", may_ship=True)


def test_overwrite_removes_only_the_run_files(tmp_path):
    """train.py's --overwrite_output_dir empties a run folder of what train.py writes, and of nothing else."""
    (tmp_path / "checkpoint-3").mkdir()
    for name in ("log.jsonl", "completions.jsonl", "final.json", "notes.txt"):
        (tmp_path / name).write_text("x")
    lock = claim_run(str(tmp_path), resume=False, overwrite=True)
    lock.close()
    assert sorted(os.listdir(tmp_path)) == [".lock", "notes.txt"]


def test_train_and_eval_claim_their_folders_through_outdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    for path, words in (("", "--output_dir= is empty"), (".", "working folder"), ("notes.txt", "is a file")):
        with pytest.raises(SystemExit, match=words):
            claim_run(path, resume=False, overwrite=True)
        argv = ["--models=('tiny',)", "--labels=()", f"--output_dir={path}"]
        with pytest.raises(SystemExit, match=words):
            eval_settings(
                eval_script.__file__, argv, eval_script.RANGES, eval_script.CHOICES, check_decoding=check_settings
            )
    assert os.listdir(tmp_path) == ["notes.txt"]


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        Exception("Error while serializing: I/O error: No space left on device (os error 28)"),  # safetensors'
    ],
)
def test_a_full_disk_leaves_the_previous_folder_as_it_was(tmp_path, error):
    """The failure while writing (measured on a 64 KiB tmpfs: safetensors raises its own error, os error 28)
    stops in one line; the folder there keeps its files and no partial folder is left beside it."""
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "sft.json").write_text("previous")

    def fill(folder):
        with open(os.path.join(folder, "model.safetensors"), "wb") as f:
            f.write(b"half")
        raise error

    with pytest.raises(SystemExit, match=r"cannot write .*/m: No space left on device \(nothing written there\)$"):
        outdir.write_whole(str(tmp_path / "m"), fill)
    assert os.listdir(tmp_path) == ["m"] and os.listdir(tmp_path / "m") == ["sft.json"]
    assert (tmp_path / "m" / "sft.json").read_text() == "previous"
    outdir.write_whole(str(tmp_path / "m"), lambda f: open(os.path.join(f, "new"), "w").close())
    assert os.listdir(tmp_path) == ["m"] and os.listdir(tmp_path / "m") == ["new"]


def test_results_are_replaced_only_once_all_are_written(tmp_path):
    (tmp_path / "results.md").write_text("previous")

    def fill(folder):
        (tmp_path / "x").write_text("")
        open(os.path.join(folder, "results.md"), "w").write("new")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(SystemExit, match="cannot write .*: No space left on device"):
        outdir.write_files(str(tmp_path), fill)
    assert (tmp_path / "results.md").read_text() == "previous" and sorted(os.listdir(tmp_path)) == ["results.md", "x"]


def checkpoint_of(tmp_path, base):
    m, tok = model.load("tiny")
    opt = torch.optim.AdamW(m.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return checkpoint.save(f"{tmp_path}/run", 1, m, opt, sched, {"model_name_or_path": "tiny", "lora_r": 0}, base=base)


def test_export_onto_a_full_disk_stops_in_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    ckpt = checkpoint_of(tmp_path, "tiny")
    usage = shutil.disk_usage
    monkeypatch.setattr(outdir.shutil, "disk_usage", lambda p: usage(p)._replace(free=0))
    loaded = []
    monkeypatch.setattr(restore, "load_trained", lambda *a, **k: loaded.append(1))
    with pytest.raises(
        SystemExit, match=r"cannot write the export to .*/export \(0 MiB free on its disk, 3 MiB needed\)"
    ):
        export.main([ckpt, f"{tmp_path}/export"])
    assert not loaded  # refused before the model loads
    monkeypatch.undo()

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(model, "save_pretrained", full)
    with pytest.raises(SystemExit, match=r"cannot write .*/export: No space left on device \(nothing written there\)"):
        export.main([ckpt, f"{tmp_path}/export"])
    assert sorted(os.listdir(tmp_path)) == ["run"]


def test_an_empty_base_model_is_refused_everywhere(tmp_path):
    """`--base_model=` (a wrapper's unset variable) would name no base: export.py trusted the checkpoint's
    named base and ran its code; every script refuses it in one line, before anything loads."""
    m, tok = model.load("tiny")
    model.save(m, tok, f"{tmp_path}/base")
    marker = tmp_path / "ran"
    with open(f"{tmp_path}/base/tiny_llada.py", "a") as f:
        f.write(f"\nimport pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    ckpt = checkpoint_of(tmp_path, f"{tmp_path}/base")
    for refuse in (
        lambda: export.main([ckpt, f"{tmp_path}/export", "--base_model="]),
        lambda: restore.load_trained(ckpt, base=""),
        lambda: eval_settings(
            eval_script.__file__,
            [f"--models=('{ckpt}',)", "--labels=()", "--base_model=", f"--output_dir={tmp_path}/e"],
            eval_script.RANGES,
            eval_script.CHOICES,
            check_decoding=check_settings,
        ),
    ):
        with pytest.raises(SystemExit, match="--base_model= is empty: name the base model"):
            refuse()
        assert not marker.exists()
    assert "--base_model= is empty" in one_line(["tools/export.py", ckpt, f"{tmp_path}/export", "--base_model="])


def test_a_changed_shipped_model_is_refused_in_one_line(tmp_path, monkeypatch):
    """A models/ folder whose model.safetensors is not the file its sft.json records (a rebuilt or replaced
    model, with the shipped record) is refused when loaded, naming how to restore it; each version of the
    file is hashed once."""
    monkeypatch.setattr(model_names, "ROOT", str(tmp_path))
    folder = tmp_path / "models" / "tiny-countdown"
    shutil.copytree(os.path.join(ROOT, "models", "tiny-countdown"), folder)
    hashed = []
    monkeypatch.setattr(model_names, "sha256", lambda p: hashed.append(p) or manifest.sha256(p))
    assert model_names.model_path_error(str(folder)) is None and model_names.model_path_error(str(folder)) is None
    model.load(str(folder))
    assert len(hashed) == 1
    weights = bytearray((folder / "model.safetensors").read_bytes())
    weights[-1] ^= 1
    (folder / "model.safetensors").write_bytes(bytes(weights))
    with pytest.raises(ValueError, match=r"models/tiny-countdown/model.safetensors is not the shipped model .*git"):
        model.load(str(folder))
    assert len(hashed) == 2
    (folder / "sft.json").unlink()
    assert "shipped model whose checksum cannot be read" in model_names.model_path_error(str(folder))


def test_sft_refuses_a_folder_before_training_and_deletes_nothing(tmp_path):
    """Each in one line before training starts (no progress bar): an empty, the working, a file, an unwritable
    and a shipped folder, a training run (with --overwrite_output_dir too), a negative learning rate."""
    run = tmp_path / "run"
    (run / "checkpoint-2").mkdir(parents=True)
    (run / "log.jsonl").write_text("{}\n")
    before = sorted(os.listdir(ROOT)), sorted(os.listdir(run))
    shipped = manifest.sha256(os.path.join(ROOT, "models", "tiny-countdown", "model.safetensors"))
    for args, words in [
        (["--output_dir="], "--output_dir= is empty"),
        (["--output_dir=."], "--output_dir=. cannot hold the model (it is the working folder"),
        (["--output_dir=README.md"], "--output_dir=README.md cannot hold the model (it is a file)"),
        ([f"--output_dir={UNWRITABLE}"], f"--output_dir={UNWRITABLE} cannot hold the model ("),
        ([], "models/tiny-countdown holds a model tools/sft.py wrote (a shipped base model"),
        ([f"--output_dir={run}"], "cannot hold the model (it exists: choose a new folder)"),
        ([f"--output_dir={run}", "--overwrite_output_dir"], "cannot hold the model (it exists"),
        ([f"--output_dir={tmp_path}/m", "--learning_rate=-1"], "--learning_rate=-1.0 must be in (0, 1]"),
        ([f"--output_dir={tmp_path}/m", "--batch_size=0"], "--batch_size=0 must be in [1, inf)"),
    ]:
        assert words in one_line(["tools/sft.py", "--max_steps=1", "--batch_size=8", *args]), args
    assert (sorted(os.listdir(ROOT)), sorted(os.listdir(run))) == before
    assert manifest.sha256(os.path.join(ROOT, "models", "tiny-countdown", "model.safetensors")) == shipped


def test_sft_replaces_its_own_model_only_when_asked(tmp_path):
    out = f"{tmp_path}/m"
    cmd = [sys.executable, "tools/sft.py", "--max_steps=1", "--batch_size=8", f"--output_dir={out}"]
    first = warm.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV)
    assert first.returncode == 0, first.stderr[-2000:]
    record = open(f"{out}/sft.json").read()
    assert "--overwrite_output_dir" in one_line(cmd[1:])
    again = warm.run([*cmd, "--overwrite_output_dir"], cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV)
    assert again.returncode == 0, again.stderr[-2000:]
    assert open(f"{out}/sft.json").read() != record and "--overwrite_output_dir" in open(f"{out}/sft.json").read()
    recorded = json.load(open(f"{out}/sft.json"))["model.safetensors sha256"]
    assert recorded == manifest.sha256(f"{out}/model.safetensors") and os.listdir(tmp_path) == ["m"]
