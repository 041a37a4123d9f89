"""Training checkpoints: everything needed to continue a run bit for bit, in the formats the
ecosystem loads, written so that a kill at any moment leaves the newest complete checkpoint loadable.

A checkpoint is a folder `out_dir/checkpoint-{step}/`, as TRL writes them:

    adapter_config.json, adapter_model.safetensors   LoRA: PeftModel.from_pretrained(base, folder)
    config.json, model.safetensors (+ modeling file) full fine-tuning: AutoModel.from_pretrained(folder)
    tokenizer files                                  the run's tokenizer
    optimizer.pt         optimizer and scheduler states, torch RNG state: tensors and numbers only,
                         read with torch.load(weights_only=True), so nothing is ever unpickled
    .metadata, __R_0.distcp   FSDP (in place of the weights and of optimizer.pt's optimizer state): each
                         rank's shards of the trained tensors and the optimizer state (sharded.py);
                         trainer_state.json's "layout" says so
    trainer_state.json   step, base model, the run's resolved config, the fingerprint of the trained
                         parameters (names and shapes), the digests of the base's weights (LoRA) and of
                         the training and held-out items, the held-out accuracy before training,
                         counters, Python's RNG state
    checksums.json       the manifest: the SHA-256 of every other file

A checkpoint is exactly the files its checksums.json lists (manifest.py): a resume, eval.py and
export.py read only those, each with the bytes it was written with, and refuse a checkpoint holding a
weights or state file it does not list, or whose trainer_state.json shows a manifest was written when
checksums.json is missing, empty or unreadable; one written before checksums were recorded is read as it
is. A run folder's checkpoints are its own folders: a symbolic link named checkpoint-N is never counted,
resumed from or rotated away (a resume warns of it; a save of that step replaces the link, not what it
points at), and a checkpoint-N whose state is of another step is refused.

train.py writes them; restore.py resumes a run from one and rebuilds the trained model for eval.py and export.py.
"""

import contextlib
import errno
import json
import os
import random
import re
import shutil

import torch
from torch.distributed.checkpoint.api import CheckpointException

from plumbing import ddp, families
from plumbing import sharded as sharded_ckpt
from plumbing.checkpoint_tensors import (
    fingerprint,
    layout,
    missing_tensors,
    saved_name,
    tensors,
    trainer_tensors,
)
from plumbing.errors import ConfigError
from plumbing.manifest import CHECKSUMS, STATE, damaged_files, write_manifest

PREFIX = "checkpoint-"
ACCUMULATE = "gradient_accumulation_steps"  # may change on resume when the number of ranks does: their product may not


class RunMismatch(ConfigError):
    """The checkpoint is whole but belongs to another model or run: an older one would not fit either."""


def names(out_dir):
    """Complete checkpoint folders in out_dir, oldest first (a half-written `.tmp` one never counts, nor a
    symbolic link: linked() names those)."""
    if not os.path.isdir(out_dir):
        return []
    found = [
        f
        for f in os.listdir(out_dir)
        if re.fullmatch(PREFIX + r"\d+", f)
        and os.path.isdir(os.path.join(out_dir, f))
        and not os.path.islink(os.path.join(out_dir, f))
    ]
    return sorted(found, key=lambda f: int(f[len(PREFIX) :]))


def linked(out_dir):
    """The warnings for symbolic links in out_dir named like checkpoints, which names() does not count: the
    run's rotation would otherwise delete, or replace, a folder it did not write."""
    found = sorted(f for f in os.listdir(out_dir) if re.fullmatch(PREFIX + r"\d+", f)) if os.path.isdir(out_dir) else []
    return [
        f"warning: {os.path.join(out_dir, f)} is a symbolic link, not counted as a checkpoint of the run (a run's "
        "checkpoints are its own folders): name it to use what it points at"
        for f in found
        if os.path.islink(os.path.join(out_dir, f))
    ]


def remove(path, ignore_errors=False):
    """A checkpoint folder and everything in it; a symbolic link as a link only (what it points at is kept)."""
    if os.path.islink(path):
        os.remove(path)
    else:
        shutil.rmtree(path, ignore_errors=ignore_errors)


def remove_partial(out_dir):
    """Delete the folders a kill left half-written or half-replaced (never read: names() skips them)."""
    for f in os.listdir(out_dir) if os.path.isdir(out_dir) else []:
        if f.startswith(PREFIX) and f.endswith((".tmp", ".old")):
            remove(os.path.join(out_dir, f), ignore_errors=True)


def newest(out_dir):
    found = names(out_dir)
    return os.path.join(out_dir, found[-1]) if found else None


def _fsync_tree(folder):
    """Every file's bytes, and the folder's entries, on disk before the folder is renamed into place."""
    for f in os.listdir(folder):
        with open(os.path.join(folder, f), "rb") as fh:
            os.fsync(fh.fileno())
    fd = os.open(folder, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)


PENDING = []  # the checkpoint whose files are still being written in the background (FSDP), at most one


def save(
    out_dir, step, model, opt, sched, config, keep=2, base=None, counters=None, tok=None, *, world=1, sharded=False,
    items=None, accuracy_before=None,
):  # fmt: skip
    """Write checkpoint-{step} (into checkpoint-{step}.tmp, then renamed) and keep the newest `keep`.
    base: the model the trained parameters sit on (LoRA adapters need it to be rebuilt); default
    config["model_name_or_path"]; with frozen parameters its weights' digest (model.weights_digest) is
    recorded. sharded (FSDP): every rank calls it and writes its own shards of the trained tensors and
    optimizer state (sharded.py) in the background, rank 0 the rest now: the folder becomes the checkpoint
    (its manifest, its name) once finish() has waited for the write, which the next save does first; else
    only rank 0 calls it and the checkpoint is whole when it returns. world: the ranks the run trains on.
    items: the digests (data.items_digest) of the run's (training, held-out) items; accuracy_before: each
    held-out item's accuracy before training, so a resume need not measure it again. Returns the folder
    (None on the ranks but 0)."""
    finish()  # the previous checkpoint's write ends before another begins
    path = os.path.join(out_dir, f"{PREFIX}{step}")
    master = not sharded or ddp.rank() == 0
    finite = sharded_ckpt.all_finite(model)
    if not (ddp.every_rank(finite) if sharded else finite):
        raise SystemExit(
            f"checkpoint {step} not written: the model's weights are not finite; the last one is {newest(out_dir)}"
        )
    tmp = path + ".tmp"
    frozen = not all(p.requires_grad for p in model.parameters())  # LoRA: the base is part of the trained model
    train_items, held_out_items = items or (None, None)
    state = {
        "step": step,
        "base": base or config["model_name_or_path"],
        "config": config,
        "fingerprint": fingerprint(model),
        "base_weights": getattr(model, "weights_digest", None) if frozen else None,
        "train_items": train_items,
        "held_out_items": held_out_items,
        "accuracy_before": accuracy_before,
        "counters": dict(counters or {}),
        "world_size": world,
        "python_rng": list(random.getstate()),
        "manifest": CHECKSUMS,  # a checkpoint of this version is read only with its manifest
    }
    if sharded:
        state["layout"] = sharded_ckpt.LAYOUT  # the trained tensors and optimizer state are DCP's files
    with written_or_removed(out_dir, step, tmp, master):
        if master:
            remove(tmp, ignore_errors=True)
            os.makedirs(tmp)
        if sharded:
            ddp.barrier()  # the folder exists before any rank writes into it
            digests = sharded_ckpt.save(tmp, model, opt, saved_name)  # every rank its own files, in the background
        if master:
            if not sharded:
                families.save_pretrained(getattr(model, "module", model), tmp)  # peft: the adapters; else the model
            if tok is not None:
                tok.save_pretrained(tmp)
            trainer = {} if sharded else {"optimizer": opt.state_dict()}  # sharded: in DCP's files
            trainer |= {"scheduler": sched.state_dict(), "torch_rng": torch.get_rng_state()}
            torch.save(trainer, os.path.join(tmp, "optimizer.pt"))
            with open(os.path.join(tmp, STATE), "w") as f:
                json.dump(state, f)
            if not sharded:
                write_manifest(tmp)
                _fsync_tree(tmp)
        if sharded:  # pending once rank 0's own files are written (a failed write leaves nothing to finish)
            PENDING.append(dict(out_dir=out_dir, step=step, keep=keep, world=world, master=master, digests=digests))
    if sharded:
        return path if master else None
    return commit(out_dir, step, keep)


def finish():
    """Wait for the checkpoint being written in the background (save(sharded=True)), if any, and make it one:
    each rank's files hashed, the manifest written, the folder renamed into place and the oldest rotated away.
    Returns its folder (None when none was being written, and on the ranks but 0). Every rank calls it; a
    process killed before it ends leaves checkpoint-N.tmp, which is never read (names(), remove_partial())."""
    if not PENDING:
        return None
    pending = PENDING.pop()
    out_dir, step, master = pending["out_dir"], pending["step"], pending["master"]
    tmp = os.path.join(out_dir, f"{PREFIX}{step}.tmp")
    with written_or_removed(out_dir, step, tmp, master):
        digests = pending["digests"].result()
        digests = {k: v for d in ddp.gather([digests], pending["world"]) for k, v in d.items()}  # names and digests
        if master:
            write_manifest(tmp, digests)
            _fsync_tree(tmp)
    return commit(out_dir, step, pending["keep"]) if master else None


@contextlib.contextmanager
def written_or_removed(out_dir, step, tmp, master):
    """No half-written folder is left, whatever failed (the model's own code included); a full disk stops the
    run in one line naming the checkpoint to resume from."""
    try:
        yield
    except BaseException as e:
        if master:
            shutil.rmtree(tmp, ignore_errors=True)
        if not disk_full(e, out_dir):
            raise
        last = newest(out_dir) or "none yet"
        raise SystemExit(
            f"the disk of {out_dir} is full: checkpoint {step} not written (removed); free space, then resume from "
            f"{last}"
        ) from None


def commit(out_dir, step, keep):
    """checkpoint-{step}.tmp, complete, renamed into place; then keep the newest `keep`. Returns the folder."""
    path, tmp = os.path.join(out_dir, f"{PREFIX}{step}"), os.path.join(out_dir, f"{PREFIX}{step}.tmp")
    if os.path.islink(path):  # not a checkpoint of the run (names() skips it): the link goes, what it points at stays
        os.remove(path)
    elif os.path.exists(path):  # a step run again after a resume from an older checkpoint
        os.replace(path, path + ".old")
        shutil.rmtree(path + ".old")
    os.replace(tmp, path)  # atomic: a reader sees the old folders or the complete new one
    # keep this one and the newest keep - 1 before it; a later-numbered one (passed over as damaged
    # by the resume) is left for the user, never counted in place of the one just written
    older = [f for f in names(out_dir) if int(f[len(PREFIX) :]) < step]
    for old in older[: max(0, len(older) - (keep - 1))]:
        shutil.rmtree(os.path.join(out_dir, old))
    return path


def disk_full(e, out_dir):
    """Whether a save failed on a full disk: torch reports a short write as RuntimeError ("unexpected pos"),
    DCP a failure on any rank as CheckpointException, holding each failed rank's exception."""
    if isinstance(e, CheckpointException):
        return any(disk_full(f[0] if isinstance(f, tuple) else f, out_dir) for f in e.failures.values())
    return isinstance(e, (OSError, RuntimeError)) and (
        (isinstance(e, OSError) and e.errno == errno.ENOSPC) or shutil.disk_usage(out_dir).free < 64 * 2**20
    )


def truncate_log(log_path, step):
    """Keep the log lines of steps <= step (those a resume does not run again); a line cut off by
    a kill is dropped."""
    if not os.path.exists(log_path):
        return
    kept = []
    with open(log_path) as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("step", 0) <= step:
                kept.append(json.dumps(row) + "\n")
    with open(log_path + ".tmp", "w") as f:
        f.writelines(kept)
    os.replace(log_path + ".tmp", log_path)


def read(path, with_tensors=False, verify=False):
    """The checkpoint's trainer state (step, base, config, fingerprint, counters, python_rng) plus
    `path` (and with_tensors, its saved `tensors` and `trainer` tensors), or one line saying why it
    cannot be read. with_tensors or verify: every file's checksum first (a damaged file is refused); of a
    sharded checkpoint under torchrun, each rank hashes its part of the files (every rank must call it)."""
    state_file = os.path.join(path, STATE)
    if not os.path.isdir(path):
        raise ConfigError(f"checkpoint {path} does not exist (a checkpoint is a folder {PREFIX}N)")
    if with_tensors or verify:
        spread = layout(path) == sharded_ckpt.LAYOUT and ddp.world() > 1  # the ranks share the hashing
        problem = damaged_files(path, (ddp.rank(), ddp.world()), ddp.first_problem) if spread else damaged_files(path)
        if problem:
            raise ConfigError(f"checkpoint {path}: {problem}")
    try:
        with open(state_file) as f:
            state = json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError(f"checkpoint {path} cannot be read ({type(e).__name__}: {str(e)[:120]})") from None
    problem = state_problem(state, need_rng=with_tensors)
    if problem:
        raise ConfigError(f"{path} is not a whole training checkpoint of this project: {STATE} {problem}")
    named = re.fullmatch(PREFIX + r"(\d+)", os.path.basename(os.path.normpath(path)))
    if named and int(named[1]) != state["step"]:  # a copy or link under another step's name
        raise ConfigError(f"checkpoint {path}: its {STATE} is of step {state['step']}, not of its folder's name")
    state["path"] = path
    if with_tensors:  # a sharded checkpoint's tensors are read by each rank, its own pieces (restore.restore)
        state["tensors"] = None if state.get("layout") == sharded_ckpt.LAYOUT else tensors(path)
        state["trainer"] = trainer_tensors(path)
    return state


def state_problem(state, need_rng):
    """What is wrong with a trainer state's fields (missing, or of the wrong type), or None."""
    if not isinstance(state, dict):
        return "is not a JSON object"
    fields = {"step": int, "base": str, "config": dict, "fingerprint": list}
    fields |= {"counters": dict, "python_rng": list} if need_rng else {}
    for key, kind in fields.items():
        if key not in state:
            return f"has no '{key}'"
        if not isinstance(state[key], kind) or isinstance(state[key], bool):
            return f"has '{key}' of type {type(state[key]).__name__}, expected {kind.__name__}"
    if state["step"] < 0 or not all(isinstance(x, list) and len(x) == 2 for x in state["fingerprint"]):
        return "has a negative 'step' or a malformed 'fingerprint'"
    rng = state.get("python_rng")
    if need_rng and not (
        len(rng) == 3
        and isinstance(rng[0], int)
        and isinstance(rng[1], list)
        and len(rng[1]) == 625
        and all(isinstance(x, int) and 0 <= x < 2**32 for x in rng[1])
    ):
        return "has a malformed 'python_rng'"
    return None


def newest_whole(run_dir, log=print):
    """The newest checkpoint of a run folder whose state and trained tensors are whole (a damaged
    one is passed over with a warning, and a symbolic link named like a checkpoint), or None."""
    for warning in linked(run_dir):
        log(warning)
    for name in reversed(names(run_dir)):
        path = os.path.join(run_dir, name)
        try:
            problem = missing_tensors(path, read(path, verify=True))
        except ConfigError as e:
            problem = str(e).removeprefix("config error: ")
        if problem is None:
            return path
        log(f"warning: {problem if path in problem else f'checkpoint {path} {problem}'}; trying an older checkpoint")
    return None
