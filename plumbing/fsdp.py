"""Fully sharded data parallel (PyTorch's FSDP2, `fully_shard`) for full fine-tuning at 8B: each rank
holds 1/world of the weights, gradients and AdamW moments, and a transformer layer's weights are
gathered whole only while it runs. The algorithm is unchanged; what changes is where tensors live:

- at load only rank 0 reads the weights: every rank builds the model on the meta device, shards it
  and receives its part from rank 0 one tensor at a time, which rank 0 reads from the safetensors
  files one at a time (stream_from_rank0) or, where it cannot, from the whole model it loaded
  (shard_from_rank0);
- training forwards and backwards are collectives (a layer's all-gather, its gradients'
  reduce-scatter), so every rank runs the same number of them (agrpo.accumulate_gradients adds the
  zero-loss passes ddp.passes_to_fill counts);
- rollouts, the old and reference log-probs and evaluation run inside `gathered`: the model is
  gathered once and kept whole, so ranks may run different numbers of forwards (rows end early,
  threshold decoding takes its own step counts) with no collective in between;
- a checkpoint is written by every rank at once, each its own shards, in the background (sharded.py); a resume on any
  number of ranks reads the pieces of its own shards. A checkpoint of whole tensors (an earlier
  version's) is read whole on every rank and sharded again (load_weights, load_optimizer).
"""

import contextlib

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from plumbing.families import family_part, unwrap


def shard(model, mixed_precision):
    """fully_shard each transformer layer, then the root (embeddings, final norm, head), in place.
    mixed_precision (CUDA): the sharded weights stay as loaded (float32: the master copy AdamW
    updates), each layer computes in bf16 and gradients are reduced in float32."""
    policy = MixedPrecisionPolicy(torch.bfloat16, torch.float32) if mixed_precision else MixedPrecisionPolicy()
    for layer in family_part(model, "layers"):
        fully_shard(layer, mp_policy=policy)
    fully_shard(unwrap(model), mp_policy=policy)  # the root every forward runs through (peft's wrapper calls it)
    return model


def shard_from_rank0(model, whole, device, mixed_precision):
    """Shard `model`, built on the meta device, in place and fill each rank's part from `whole`: rank 0's
    model as loaded, with the same modules (None on the other ranks). Rank 0 sends one tensor at a
    time, so no other rank ever holds more than one whole tensor; every tensor takes the dtype it was
    loaded in, and the buffers, those outside the state dict too (a rotary table), are rank 0's."""
    import torch.distributed as dist

    dtypes = [None]
    if whole is not None:
        dtypes = [{n: t.dtype for n, t in [*whole.named_parameters(), *whole.named_buffers()]}]
    dist.broadcast_object_list(dtypes, src=0)
    with torch.no_grad():  # .data: a tied parameter stays one parameter
        for prefix, module in model.named_modules():
            for key, t in [*module._parameters.items(), *module._buffers.items()]:
                dtype = dtypes[0].get(f"{prefix}.{key}".lstrip("."))
                if t is not None and dtype not in (None, t.dtype):
                    t.data = t.data.to(dtype)
    shard(model, mixed_precision)
    model.to_empty(device=device)
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(model, whole.state_dict() if whole is not None else {}, options=options)
    with torch.no_grad():
        for name, b in model.named_buffers():
            if whole is not None:
                b.copy_(whole.get_buffer(name))
            dist.broadcast(b, src=0)
    return model


def stream_from_rank0(models, files, device, mixed_precision, dtype=None, seen=None):
    """Shard `models` (built on the meta device with the same modules: the policy and its frozen reference
    copy) in place and fill them from the safetensors `files` that rank 0 reads one tensor at a time
    (safe_open; None on the other ranks): rank 0 sends each tensor whole, every rank keeps its part, so no rank
    holds more than one whole tensor besides its shards, rank 0 included (a whole model loaded first held
    them all there). dtype: every floating-point parameter's (None: as built). Buffers outside the state dict
    keep the values the modules were built with. seen(name, whole tensor): each parameter, by name."""
    import torch.distributed as dist
    from safetensors import safe_open

    for m in models:
        with torch.no_grad():
            for p in m.parameters():  # .data: a tied parameter stays one parameter
                if dtype is not None and p.is_floating_point():
                    p.data = p.data.to(dtype)
        built = {n: b.clone() for n, b in m.named_buffers()}  # real: only parameters are built on the meta device
        shard(m, mixed_precision)
        m.to_empty(device=device)
        with torch.no_grad():
            for n, b in m.named_buffers():
                b.copy_(built[n])
    first = models[0]
    stored = stored_names(first)
    targets = [dict([*m.named_parameters(), *persistent_buffers(m)]) for m in models]
    file_of = {}
    for f in files or []:
        with safe_open(f, "pt") as st:
            file_of |= {k: f for k in st.keys()}
    with torch.no_grad():
        for name, t in sorted([*first.named_parameters(), *persistent_buffers(first)]):
            whole = torch.empty(t.shape, dtype=t.dtype, device=device)
            if files is not None:
                key = next(k for k in stored[name] if k in file_of)
                with safe_open(file_of[key], "pt") as st:  # opened for each tensor: its mapped pages go with it
                    whole.copy_(st.get_tensor(key))
            dist.broadcast(whole, src=0)
            if seen is not None and isinstance(t, torch.nn.Parameter):
                seen(name, whole)
            for own in (target[name] for target in targets):
                part = distribute_tensor(whole, own.device_mesh, own.placements, src_data_rank=None)
                local(own).copy_(local(part)) if isinstance(own, DTensor) else own.copy_(whole)
            del whole
    return models


def stored_names(model):
    """{name of a parameter or persistent buffer (as named_parameters gives it): every name it is stored under
    in the state dict} (a tied parameter has several; safetensors files keep one of them)."""
    tensors = {id(t): n for n, t in [*model.named_parameters(), *persistent_buffers(model)]}
    names = {}
    for key, t in [*model.named_parameters(remove_duplicate=False), *persistent_buffers(model)]:
        names.setdefault(tensors[id(t)], []).append(key)
    return names


def persistent_buffers(model):
    """(name, buffer) of the buffers in the model's state dict."""
    keys = model.state_dict().keys()
    return [(n, b) for n, b in model.named_buffers() if n in keys]


def reshard(model):
    """Every sharded module of the model back to its shards (a forward outside `gathered` leaves the root whole)."""
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def is_sharded(model):
    return isinstance(unwrap(model), FSDPModule)


def local(t):
    """A rank's own part of a sharded tensor (a replicated one's is the whole value); else t."""
    return t.to_local() if isinstance(t, DTensor) else t


@contextlib.contextmanager
def gathered(*models):
    """Every sharded module of `models` gathered whole for the stretch inside (no-grad forwards only),
    freed again after: one all-gather per module, however many forwards run inside."""
    present = [model for model in models if model is not None]
    modules = [module for model in present for module in model.modules() if isinstance(module, FSDPModule)]
    roots = {id(unwrap(model)) for model in present}
    layers = [module for module in modules if id(module) not in roots]
    for module in modules:
        module.unshard()
    for module in layers:  # a root keeps its weights after forward anyway (FSDP's choice: backward needs them first)
        module.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for module in modules:
            module.reshard()
        for module in layers:
            module.set_reshard_after_forward(True, recurse=False)


@torch.no_grad()
def load_weights(model, weights):
    """Copy whole tensors {parameter name: tensor} into a sharded model: every rank holds them whole
    and keeps its own part, with no communication."""
    for n, p in model.named_parameters():
        if n in weights:
            p.copy_(distribute_tensor(weights[n].to(p.dtype), p.device_mesh, p.placements, src_data_rank=None))


def load_optimizer(model, opt, optimizer):
    """A whole optimizer state (keyed by parameter name) into the sharded optimizer."""
    set_optimizer_state_dict(model, opt, optimizer, options=StateDictOptions(full_state_dict=True))
