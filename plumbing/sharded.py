"""Sharded checkpoints (torch.distributed.checkpoint, "DCP"): under FSDP each rank writes and reads only its
own part of the trained tensors and of the AdamW moments, all ranks at once, so no rank ever holds the
whole model or optimizer on its host. In the checkpoint folder:

    .metadata          DCP's index: every tensor's name, whole shape and dtype, and where each piece of it lies
    __R_0.distcp       rank R's pieces (the trained tensors under their checkpoint names, the optimizer state)

A resume reads, on any number of ranks, the pieces of its own shards (DCP reshards); eval.py and export.py
read them whole on one process (whole_tensors). The manifest lists every file with its SHA-256, each
rank hashing the files it wrote.
"""

import os
import warnings

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

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


def save(folder, model, opt, saved_name):
    """Every rank writes its own pieces of the trained tensors and optimizer state into folder (which
    exists), fsyncs them and returns {file name: SHA-256} of the files it wrote (rank 0: .metadata too).
    Every rank must call it."""
    # FSDP's state-dict hook registers each module's sharded parameters again: a stop signal that cut a
    # rollout short can leave a gathered module's whole ones registered, which are not the optimizer's
    get_model_state_dict(model)
    state = {MODEL: trained(model, saved_name), OPTIMIZER: get_optimizer_state_dict(model, opt)}
    dcp.save(state, checkpoint_id=folder)
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
