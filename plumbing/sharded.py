"""Sharded checkpoints (torch.distributed.checkpoint, "DCP"): under FSDP each rank writes and reads only its
own part of the trained tensors and of the AdamW moments, all ranks at once, so no rank ever holds the
whole model or optimizer on its host. In the checkpoint folder:

    .metadata          DCP's index: every tensor's name, whole shape and dtype, and where each piece of it lies
    __R_0.distcp       rank R's pieces (the trained tensors under their checkpoint names, the optimizer state)

The write runs in the background (DCP's async_save): save() copies the rank's pieces to host memory
(its own shards once more, never the whole), and a thread writes, fsyncs and hashes them while training
goes on; the caller waits for it before the next save and at the run's end (checkpoint.finish). A resume
reads, on any number of ranks, the pieces of its own shards (DCP reshards); eval.py and export.py read
them whole on one process (whole_tensors). The manifest lists every file with its SHA-256, each rank
hashing the files it wrote.
"""

import datetime
import os
import warnings
from concurrent.futures import Future

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.constants import default_pg_timeout

from plumbing import disk
from plumbing.fsdp import local
from plumbing.manifest import sha256

LAYOUT = "sharded"  # trainer_state.json's "layout" of such a checkpoint (absent: whole tensors in safetensors)
METADATA = ".metadata"
SUFFIX = ".distcp"
MODEL, OPTIMIZER = "model", "optimizer"  # the two parts of the saved state


def distributed():
    return dist.is_available() and dist.is_initialized()


def trained(model, saved_name):
    """{checkpoint name: the trained parameter's own tensor (a rank's shard under FSDP)}, detached so DCP
    reads into it in place."""
    return {saved_name(n): p.detach() for n, p in model.named_parameters() if p.requires_grad}


WRITERS = []  # the process group of the background writes, made once


def writer_group(written):
    """A gloo group of the writes' own: DCP's collectives (the plan, the metadata) run in the writing thread, and
    on the training's group they would interleave with the training's in an order the ranks need not agree on.
    Its timeout covers a write of `written` bytes a rank (disk.save_minutes), and gloo's default at least."""
    if not WRITERS:  # every rank at its first save, the same point
        minutes = max(disk.save_minutes(written), default_pg_timeout.total_seconds() / 60)
        WRITERS.append(dist.new_group(backend="gloo", timeout=datetime.timedelta(minutes=minutes)))
    return WRITERS[0]


def save(folder, model, opt, saved_name):
    """Start writing this rank's pieces of the trained tensors and optimizer state into folder (which exists):
    they are copied to host memory before it returns (training may change them then), and written by a thread.
    Returns a Future of {file name: SHA-256} of the files this rank wrote (rank 0: .metadata too), fsynced.
    Every rank must call it."""
    # FSDP's state-dict hook registers each module's sharded parameters again: a stop signal that cut a
    # rollout short can leave a gathered module's whole ones registered, which are not the optimizer's
    get_model_state_dict(model)
    state = {MODEL: trained(model, saved_name), OPTIMIZER: get_optimizer_state_dict(model, opt)}
    own = sum(local(t).numel() * t.element_size() for part in state.values() for t in tensors_of(part))
    group = writer_group(own) if distributed() else None  # one process with no process group: it writes alone
    written = dcp.async_save(state, checkpoint_id=folder, process_group=group, no_dist=group is None)
    digests = Future()

    def hash_own(written):  # in the writing thread, once every rank's files are written
        try:
            written.result()
            digests.set_result(own_digests(folder))
        except BaseException as e:
            digests.set_exception(e)

    written.add_done_callback(hash_own)
    return digests


def tensors_of(state):
    """The tensors of a (nested) state dict."""
    if torch.is_tensor(state):
        return [state]
    values = state.values() if isinstance(state, dict) else state if isinstance(state, (list, tuple)) else []
    return [t for v in values for t in tensors_of(v)]


def own_digests(folder):
    """{file name: SHA-256} of the files this rank wrote, each fsynced first."""
    rank = dist.get_rank() if distributed() else 0
    own = sorted(f for f in os.listdir(folder) if f.startswith(f"__{rank}_") and f.endswith(SUFFIX))
    own += [METADATA] if rank == 0 else []
    digests = {}
    for name in own:
        with open(os.path.join(folder, name), "rb") as fh:
            os.fsync(fh.fileno())
        digests[name] = sha256(os.path.join(folder, name))
    return digests


def shapes(folder, part=MODEL):
    """{name: whole shape} of the tensors of one part the checkpoint holds, from .metadata alone."""
    meta = dcp.FileSystemReader(folder).read_metadata().state_dict_metadata
    prefix = part + "."
    return {k[len(prefix) :]: list(v.size) for k, v in meta.items() if k.startswith(prefix) and hasattr(v, "size")}


def load(folder, model, opt, saved_name):
    """Read the checkpoint into model's trained tensors (and opt's state), each rank only the pieces of its
    own shards, in place. Every rank must call it; on one process with no process group it reads alone."""
    state = {MODEL: trained(model, saved_name)}
    if opt is not None:
        state[OPTIMIZER] = get_optimizer_state_dict(model, opt)  # a fresh optimizer's state made first, then filled
    with warnings.catch_warnings():  # one process: DCP warns that it reads without a process group
        warnings.simplefilter("ignore")
        dcp.load(state, checkpoint_id=folder, no_dist=not distributed())
    if opt is not None:
        set_optimizer_state_dict(model, opt, state[OPTIMIZER])


def whole_tensors(folder):
    """{name: whole tensor} of the trained tensors, read on one process (eval.py, export.py, tests)."""
    meta = dcp.FileSystemReader(folder).read_metadata().state_dict_metadata
    prefix = MODEL + "."
    empty = {
        k[len(prefix) :]: torch.empty(v.size, dtype=v.properties.dtype)
        for k, v in meta.items()
        if k.startswith(prefix) and hasattr(v, "size")
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load({MODEL: empty}, checkpoint_id=folder, no_dist=True)
    return empty


def all_finite(model, opt=None):
    """Whether this rank's part of every trained tensor (and of opt's floating-point state) is finite: a local
    check, the caller agrees over the ranks."""
    tensors = [p for p in model.parameters() if p.requires_grad]
    if opt is not None:
        tensors += [t for entry in opt.state.values() for t in entry.values() if torch.is_tensor(t)]
    return all(bool(torch.isfinite(local(t)).all()) for t in tensors if t.is_floating_point())
