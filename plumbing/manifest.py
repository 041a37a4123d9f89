"""A checkpoint's manifest, checksums.json: the files the checkpoint is made of, each with the SHA-256 of the
bytes it was written with. A checkpoint is exactly those files: nothing reads another file of the folder,
and a weights or state file the manifest does not list refuses the checkpoint, as a listed file that is
missing, changed or a symbolic link does (a copy of older weights dropped in, model2.safetensors, never
overrides the checked ones). A checkpoint whose trainer_state.json shows it was written with a manifest
needs one: missing, empty or unreadable, it is refused; one written before checksums were recorded is
read as it is, unverified.

What this cannot vouch for: a folder whose checksums.json is deleted and whose trainer_state.json is
rewritten without the keys that mark it, which reads as a checkpoint from before checksums; nor files
changed together with their checksums (a checkpoint someone else built): the structural checks
(checkpoint.read, restore.restore) and the trust rules for code (restore.load_trained) stand there.
"""

import hashlib
import json
import os

from plumbing.errors import ConfigError

CHECKSUMS = "checksums.json"
STATE = "trainer_state.json"
# files torch, transformers or peft load as weights or states: one in the folder that checksums.json does
# not list refuses the checkpoint (another file nothing reads, a note or .DS_Store, is left alone)
LOADABLE = (".safetensors", ".bin", ".pt", ".pth", ".distcp", ".metadata")
# keys of trainer_state.json that only versions writing checksums.json record ("manifest" since it is
# marked; train_items and base_weights came later than checksums): such a checkpoint needs its manifest
WRITTEN_WITH_MANIFEST = ("manifest", "train_items", "base_weights")


def write_manifest(folder, known=None):
    """Record checksums.json: every file of the folder written so far, with its SHA-256 (those of `known`,
    {name: SHA-256}, as the processes that wrote them hashed them: a sharded checkpoint's ranks)."""
    known = known or {}
    digests = {name: known.get(name) or sha256(os.path.join(folder, name)) for name in sorted(os.listdir(folder))}
    with open(os.path.join(folder, CHECKSUMS), "w") as f:
        json.dump(digests, f, indent=1)


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


VERIFIED = set()  # (folder, checksums.json's mtime) already verified in this process: each file is hashed once


def manifest(path):
    """({file name: SHA-256} as the checkpoint's checksums.json lists them, None), or (None, None) for a
    checkpoint written before checksums were recorded, or (None, why the manifest cannot be trusted):
    missing, empty or unreadable where trainer_state.json shows one was written, lacking a file every
    checkpoint holds, a listed file missing or a symbolic link, or a weights or state file not listed."""
    try:
        with open(os.path.join(path, CHECKSUMS)) as f:
            recorded = json.load(f)
    except FileNotFoundError:
        return None, unmarked_problem(path)
    except (OSError, ValueError) as e:
        return None, f"{CHECKSUMS} cannot be read ({type(e).__name__})"
    if not (isinstance(recorded, dict) and all(isinstance(v, str) for v in recorded.values())):
        return None, f"{CHECKSUMS} is not a map of file names to checksums"
    for name in (STATE, "optimizer.pt"):  # every checkpoint's (its weights: checkpoint_tensors.missing_tensors)
        if name not in recorded:
            return None, f"{CHECKSUMS} does not list {name}"
    for name in recorded:
        file = os.path.join(path, name)
        if os.path.basename(name) != name or not os.path.isfile(file):
            return None, f"{name} is missing"
        if os.path.islink(file):
            return None, f"{name} is a symbolic link, not a file of the checkpoint"
    unlisted = sorted(f for f in os.listdir(path) if f.endswith(LOADABLE) and f not in recorded)
    if unlisted:
        return None, f"{unlisted[0]} is not one of the files its {CHECKSUMS} lists (remove it to use the checkpoint)"
    return recorded, None


def unmarked_problem(path):
    """Why a checkpoint without checksums.json is not one written before checksums were recorded, or None:
    its trainer_state.json holds a key only versions writing a manifest record, or cannot tell."""
    try:
        with open(os.path.join(path, STATE)) as f:
            state = json.load(f)
    except (OSError, ValueError) as e:
        return f"{CHECKSUMS} is missing and {STATE} cannot be read ({type(e).__name__})"
    if not isinstance(state, dict):
        return f"{CHECKSUMS} is missing and {STATE} is not a JSON object"
    if any(key in state for key in WRITTEN_WITH_MANIFEST):
        return f"{CHECKSUMS} is missing, but {STATE} shows the checkpoint was written with one"
    return None


def damaged_files(path, part=(0, 1), agree=None):
    """Why a checkpoint's files are not exactly those it wrote, with the bytes it wrote (manifest(),
    checksums.json), or None. A checkpoint written before checksums were recorded is read unverified.
    part=(rank, world), agree: the ranks share the hashing, each its part of the files, and agree(problem)
    returns the first rank's problem, or None, on every rank (a sharded checkpoint: its bytes read once)."""
    recorded, problem = manifest(path)
    if recorded is None:
        return problem
    key = (os.path.realpath(path), os.stat(os.path.join(path, CHECKSUMS)).st_mtime_ns)
    if key in VERIFIED:
        return None
    mine = sorted(recorded)[part[0] :: part[1]]
    problem = next(
        (
            f"{name} is damaged (its SHA-256 differs from the one recorded when it was written)"
            for name in mine
            if sha256(os.path.join(path, name)) != recorded[name]
        ),
        None,
    )
    problem = agree(problem) if agree is not None else problem
    if problem is None:
        VERIFIED.add(key)
    return problem


def weight_files(path):
    """The checkpoint's safetensors files: those its manifest lists (every one in the folder for a
    checkpoint written before checksums were recorded); ConfigError when the manifest cannot be trusted."""
    recorded, problem = manifest(path)
    if problem:
        raise ConfigError(f"checkpoint {path}: {problem}")
    names = recorded if recorded is not None else os.listdir(path)
    return sorted(f for f in names if f.endswith(".safetensors"))
