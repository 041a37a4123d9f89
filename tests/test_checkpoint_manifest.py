"""A checkpoint is exactly the files its manifest (checksums.json) lists: a weights file it does not list, or a
manifest missing or empty where trainer_state.json shows one was written, refuses it (a resume takes the next
older one); a run folder's checkpoints are its own folders, so a symbolic link is never counted, resumed from,
or rotated away. Unit-level, on the embedded model's LoRA checkpoints (test_reliability.lora_run)."""

import json
import os
import shutil

import pytest
import torch
from test_reliability import LORA, lora_run

from plumbing import checkpoint, lifecycle, manifest, restore

CONFIG = {"model_name_or_path": "tiny", "lora_r": 4, "lora_alpha": 8, "lora_target_modules": list(LORA)}


def trained(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def resume(out_dir, model, opt, sched, warnings, only=None):
    return restore.resume(str(out_dir), model, opt, sched, {}, (), (), log=warnings.append, only=only)


def test_a_weights_file_the_manifest_does_not_list_is_refused(tmp_path, capsys):
    """An older checkpoint's adapters copied in as model2.safetensors never override the checked ones: eval.py
    and export.py (load_trained, resolve) and the resume refuse the checkpoint naming the file, the resume
    and a run folder given to eval.py take the older one; a file nothing loads (a note) is left alone."""
    model, opt, sched = lora_run(tmp_path)  # checkpoint-1, then checkpoint-2 with every adapter 0.02 further
    at_2 = trained(model)
    ckpt = f"{tmp_path}/checkpoint-2"
    shutil.copy(f"{tmp_path}/checkpoint-1/adapter_model.safetensors", f"{ckpt}/model2.safetensors")
    unlisted = "model2.safetensors is not one of the files its checksums.json lists"
    for read in (checkpoint.tensors, restore.load_trained):
        with pytest.raises(SystemExit, match=f"checkpoint {ckpt}: {unlisted}"):
            read(ckpt)
    assert restore.resolve(str(tmp_path)) == ("checkpoint", f"{tmp_path}/checkpoint-1")
    assert unlisted in capsys.readouterr().err
    warnings = []
    assert resume(tmp_path, model, opt, sched, warnings)[0] == 1
    assert unlisted in warnings[0] and "trying an older checkpoint" in warnings[0]
    assert all(torch.allclose(p, at_2[n] - 0.02) for n, p in trained(model).items())
    os.remove(f"{ckpt}/model2.safetensors")
    open(f"{ckpt}/notes.txt", "w").write("the run with the better seed\n")
    assert resume(tmp_path, model, opt, sched, warnings)[0] == 2
    assert all(torch.equal(p, at_2[n]) for n, p in trained(model).items())


@pytest.mark.parametrize("how", ["deleted", "{}", "not JSON", "without optimizer.pt", "without the weights"])
def test_a_checkpoint_written_with_a_manifest_is_never_read_without_it(tmp_path, how):
    """checksums.json deleted, emptied, unreadable, or no longer listing a file every checkpoint holds:
    refused in one line (eval.py, export.py), passed over for the next older one (resume)."""
    model, opt, sched = lora_run(tmp_path)
    ckpt = f"{tmp_path}/checkpoint-2"
    file = f"{ckpt}/{checkpoint.CHECKSUMS}"
    listed = json.load(open(file))
    if how == "deleted":
        os.remove(file)
    elif how in ("{}", "not JSON"):
        open(file, "w").write("{}" if how == "{}" else "{")
    else:
        del listed["optimizer.pt" if how == "without optimizer.pt" else "adapter_model.safetensors"]
        json.dump(listed, open(file, "w"))
    with pytest.raises(SystemExit, match=f"checkpoint {ckpt}: .*{checkpoint.CHECKSUMS}"):
        restore.load_trained(ckpt)
    warnings = []
    assert resume(tmp_path, model, opt, sched, warnings)[0] == 1 and "checkpoint-2" in warnings[0]


def test_a_checkpoint_from_before_checksums_is_read_as_it_was(tmp_path):
    """New checkpoints mark their trainer_state.json ("manifest"); one without that mark but with a key only
    versions writing checksums record is refused without its checksums.json; one with neither (written before
    checksums) is read unverified, every safetensors file in its folder, as before."""
    lora_run(tmp_path, steps=(1,))
    ckpt = f"{tmp_path}/checkpoint-1"
    state = json.load(open(f"{ckpt}/trainer_state.json"))
    assert state["manifest"] == checkpoint.CHECKSUMS and {"train_items", "base_weights"} <= state.keys()
    os.remove(f"{ckpt}/{checkpoint.CHECKSUMS}")
    for key in ("manifest", "train_items", "base_weights"):
        with pytest.raises(SystemExit, match="checksums.json is missing, but trainer_state.json shows"):
            restore.load_trained(ckpt)
        del state[key]
        json.dump(state, open(f"{ckpt}/trainer_state.json", "w"))
    assert restore.load_trained(ckpt)[2] == CONFIG
    saved = checkpoint.tensors(ckpt)
    shutil.copy(f"{ckpt}/adapter_model.safetensors", f"{ckpt}/more.safetensors")
    assert manifest.weight_files(ckpt) == ["adapter_model.safetensors", "more.safetensors"]
    assert checkpoint.tensors(ckpt).keys() == saved.keys()


def test_a_symbolic_link_is_never_a_checkpoint_of_the_run(tmp_path, capsys):
    """A run folder holding links named like checkpoints (to another run's): the resume warns and takes the
    run's own newest, saving and rotating go on (the link at the step written is replaced by the checkpoint,
    one at an older step is left), a link named .tmp goes as a link, the next resume continues from the new
    checkpoint, and what the links point at is never touched."""
    elsewhere, run = tmp_path / "elsewhere", tmp_path / "run"
    lora_run(elsewhere)
    model, opt, sched = lora_run(run, keep=2)
    os.symlink(elsewhere / "checkpoint-2", run / "checkpoint-4")  # a step-2 checkpoint under a later step's name
    os.symlink(elsewhere / "checkpoint-1", run / "checkpoint-0")  # the next one rotation would delete
    warnings = []
    assert resume(run, model, opt, sched, warnings)[0] == 2
    assert [w.split()[1] for w in warnings[:2]] == [f"{run}/checkpoint-0", f"{run}/checkpoint-4"]
    assert all("is a symbolic link, not counted as a checkpoint" in w for w in warnings[:2])
    assert warnings[2:] == [f"resumed from {run}/checkpoint-2 (step 2)"]
    for step in (3, 4):
        checkpoint.save(str(run), step, model, opt, sched, CONFIG, keep=2)
    assert sorted(os.listdir(run)) == ["checkpoint-0", "checkpoint-3", "checkpoint-4"]
    assert os.path.islink(run / "checkpoint-0") and not os.path.islink(run / "checkpoint-4")
    assert restore.resolve(str(run)) == ("checkpoint", f"{run}/checkpoint-4")  # eval.py and export.py
    assert "checkpoint-0 is a symbolic link" in capsys.readouterr().err
    os.symlink(elsewhere / "checkpoint-1", run / "checkpoint-5.tmp")  # as if a kill left it
    warnings = []
    assert resume(run, model, opt, sched, warnings)[0] == 4 and warnings[-1].startswith("resumed from")
    assert not os.path.lexists(run / "checkpoint-5.tmp")
    os.symlink(elsewhere / "checkpoint-1", run / "checkpoint-5.tmp")
    checkpoint.save(str(run), 5, model, opt, sched, CONFIG, keep=2)
    assert checkpoint.names(str(run)) == ["checkpoint-4", "checkpoint-5"]
    for step in (1, 2):
        checkpoint.read(str(elsewhere / f"checkpoint-{step}"), with_tensors=True)
    assert sorted(os.listdir(elsewhere)) == ["checkpoint-1", "checkpoint-2"]


def test_a_checkpoint_named_through_a_link_resumes_only_as_its_own_step(tmp_path):
    """--resume_from_checkpoint may name a link (what it points at is read); a checkpoint-N whose state is of
    another step is refused in one line, a link or a copy alike."""
    model, opt, sched = lora_run(tmp_path / "a")
    os.makedirs(tmp_path / "b")
    os.symlink(tmp_path / "a/checkpoint-2", tmp_path / "b/checkpoint-2")
    os.symlink(tmp_path / "a/checkpoint-2", tmp_path / "b/checkpoint-4")
    shutil.copytree(tmp_path / "a/checkpoint-1", tmp_path / "b/checkpoint-3")
    for name in ("checkpoint-4", "checkpoint-3"):
        step = 2 if name == "checkpoint-4" else 1
        with pytest.raises(SystemExit, match=f"b/{name}: its trainer_state.json is of step {step}, not of its folder"):
            resume(tmp_path / "b", model, opt, sched, [], only=str(tmp_path / "b" / name))
    assert resume(tmp_path / "b", model, opt, sched, [], only=str(tmp_path / "b/checkpoint-2"))[0] == 2


def test_a_symbolic_link_inside_a_checkpoint_is_refused(tmp_path):
    """A checkpoint's files are its own: a listed file replaced by a link (to the same bytes) is refused."""
    lora_run(tmp_path / "run")
    ckpt = tmp_path / "run/checkpoint-2"
    shutil.move(ckpt / "adapter_model.safetensors", tmp_path / "adapters.safetensors")
    os.symlink(tmp_path / "adapters.safetensors", ckpt / "adapter_model.safetensors")
    with pytest.raises(SystemExit, match="adapter_model.safetensors is a symbolic link, not a file of the"):
        restore.load_trained(str(ckpt))


def test_overwriting_a_run_leaves_a_linked_checkpoint_alone(tmp_path):
    """--overwrite_output_dir empties the run's own checkpoints and logs; a link named like a checkpoint is
    not the run's: neither it nor what it points at is removed (and no traceback)."""
    lora_run(tmp_path / "elsewhere", steps=(1,))
    lora_run(tmp_path / "run", steps=(2,))
    open(tmp_path / "run/log.jsonl", "w").write('{"step": 2}\n')
    os.symlink(tmp_path / "elsewhere/checkpoint-1", tmp_path / "run/checkpoint-1")
    lifecycle.claim(str(tmp_path / "run"), resume=False, overwrite=True).close()
    assert sorted(os.listdir(tmp_path / "run")) == [".lock", "checkpoint-1"]
    checkpoint.read(str(tmp_path / "elsewhere/checkpoint-1"), with_tensors=True)
