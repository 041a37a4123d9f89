"""The denoiser p_θ(x_0 | x_t) behind one `load`, and what training needs around it: the policy with
LoRA and its reference, activation checkpointing, regional compilation (its logits: logits.py).

    load("tiny")                          # the embedded model (tiny_llada.py), seeded random init
    load("tiny_shifted")                  # the same with a next-token head, as Dream's
    load("models/tiny-countdown")         # any Hugging Face model folder: config, weights, tokenizer
    load("GSAI-ML/LLaDA-8B-Instruct")     # a hub id, through the model's remote code

Every model is a Hugging Face model whose forward returns `.logits` (B, L, V); folders and hub ids
load through the same `from_pretrained(..., trust_remote_code=True)` path (the family's Auto class), so the tests of
the embedded model exercise the path LLaDA-8B takes.
"""

import contextlib
import copy
import functools
import hashlib
import os

import torch

from plumbing import fsdp, tiny_llada
from plumbing.end_ids import end_ids, generation_config_eos
from plumbing.errors import first_line
from plumbing.families import (
    family_of,
    family_of_config,
    family_part,
    save_pretrained,
    unwrap,
)
from plumbing.logits import forward_logits, probe_padding_mask
from plumbing.model_names import EMBEDDED, model_path_error, resolved, shipped
from plumbing.outdir import write_whole


def load(
    name_or_path="tiny", *, device="cpu", dtype=None, seed=0, tiny_overrides=None, trust_remote_code=True, empty=False
):
    """Return (model, tokenizer). The tokenizer carries `mask_token_id` and `eos_token_id`, and
    `tokenizer.eos_ids` the ids that end a completion (end_ids). dtype None keeps the weights' own.
    trust_remote_code=False refuses, in one line, a model whose code is its own files (`auto_map`) rather than
    transformers'. empty: the model's modules with every parameter on the meta device (no weight read, none
    allocated, nothing run): what a rank builds under FSDP before its part of the weights arrives
    (fsdp.shard_from_rank0)."""
    generation_eos = None  # generation_config.json's eos_token_id
    if name_or_path in EMBEDDED:
        tok = tiny_llada.build_tokenizer()
        config_class, model_class = EMBEDDED[name_or_path]
        building = empty_modules() if empty else contextlib.nullcontext()
        with torch.random.fork_rng(devices=[]), building:  # seeded init without touching the caller's RNG
            torch.manual_seed(seed)
            config = config_class(
                **{"vocab_size": len(tok), "mask_token_id": tok.mask_token_id} | (tiny_overrides or {})
            )
            model = model_class(config)
    else:
        model, tok, generation_eos = _from_pretrained(name_or_path, dtype, trust_remote_code, empty)
    if tok.mask_token_id is None:  # LLaDA's tokenizer declares no mask token; its config has the id
        mask_id = getattr(model.config, "mask_token_id", None)
        mask_id = family_of(model).mask_id if mask_id is None else mask_id
        if mask_id is None:
            raise ValueError(
                f"tokenizer of {name_or_path!r} has no mask token and the model config has no mask_token_id"
            )
        tok.mask_token = tok.convert_ids_to_tokens(int(mask_id))
    if tok.pad_token_id is None:
        tok.pad_token_id = tok.eos_token_id
    tok.eos_ids = end_ids(getattr(model.config, "eos_token_id", None), generation_eos, tok)
    family_of(model)  # an architecture the code does not know stops here
    if getattr(model.config, "fuse_cross_entropy", False):  # SDAR's: a fused loss returns no logits in train mode
        model.config.fuse_cross_entropy = False
    if empty:
        model.tie_weights()  # as from_pretrained does after building: no init ran to tie them
        return model, tok
    model = model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
    check_compatible(model, tok)
    model.honours_padding_mask = probe_padding_mask(model, tok.pad_token_id)
    model.weights_digest = weights_digest(model)  # a LoRA checkpoint records its base's: checkpoint.save
    return model, tok


def weights_digest(model, samples=1024):
    """SHA-256 of `samples` evenly spaced values of each weight tensor, read in bf16 (a float32 copy of bf16
    weights reads the same): the same base weights give the same digest, weights trained or replaced under
    the same name another, at the cost of reading 1,024 values a tensor."""
    digest = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        add_to_digest(digest, name, p, samples)
    return digest.hexdigest()


def add_to_digest(digest, name, p, samples=1024):
    """One tensor's part of weights_digest, in order of name (the weights streamed to FSDP's ranks add theirs)."""
    flat = p.detach().reshape(-1)
    values = flat[:: max(1, flat.numel() // samples)][:samples].to(torch.bfloat16).float().cpu()
    digest.update(name.encode() + values.numpy().tobytes())


def save(model, tok, path):
    """A Hugging Face model folder (`write_model`), written beside `path` and renamed into place
    (outdir.write_whole): a full disk or a kill while writing leaves the previous folder as it was."""
    return write_whole(path, lambda folder: write_model(model, tok, folder))


def write_model(model, tok, folder):
    """Config (with auto_map for remote code), safetensors weights, the modeling file where the model has one,
    the tokenizer, into an existing folder."""
    save_pretrained(unwrap(model), folder)
    tok.save_pretrained(folder)


@contextlib.contextmanager
def empty_modules():
    """Modules built with every parameter on the meta device and no init run, as from_pretrained builds
    them before it reads the weights (a parameter its code puts on a device by name too)."""
    from transformers.integrations.accelerate import init_empty_weights
    from transformers.modeling_utils import no_init_weights

    with no_init_weights(), init_empty_weights():
        yield


def _from_pretrained(name_or_path, dtype, trust_remote_code=True, empty=False):
    """The model and tokenizer of a folder or hub id; empty: the model from its config alone (empty_modules)."""
    import transformers

    problem = model_path_error(name_or_path)
    if problem:
        raise ValueError(problem)
    name_or_path = resolved(name_or_path)
    try:
        config = transformers.AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        auto_class = getattr(transformers, family_of_config(config).auto_class)  # the class whose forward gives logits
        tok = transformers.AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        if empty:
            with empty_modules():
                model = auto_class.from_config(config, trust_remote_code=trust_remote_code)
        else:
            model = auto_class.from_pretrained(
                name_or_path, config=config, trust_remote_code=trust_remote_code, dtype=dtype or "auto"
            )
        generation_eos = generation_config_eos(name_or_path)
    # no such hub id, no network, a file missing or damaged (safetensors and tokenizers raise their own
    # types), a tokenizer transformers cannot map to the config's class, remote code needing a package
    except Exception as e:
        raise ValueError(f"cannot load model {name_or_path!r}: {first_line(e)}") from None
    return model, tok, generation_eos


def check_compatible(model, tok):
    if tok.mask_token_id is None:
        raise ValueError("tokenizer has no mask token: a masked diffusion LM needs `mask_token_id`")
    if tok.eos_ids[0] is None:
        raise ValueError("neither the model config nor the tokenizer names an eos token: completions could never end")
    p = next(model.parameters())
    with torch.no_grad():  # the logits' width, read from one forward pass (config fields differ by model)
        V = forward_logits(model, torch.zeros(1, 2, dtype=torch.long, device=p.device)).shape[-1]
    if len(tok) > V or tok.mask_token_id >= V:
        raise ValueError(
            f"tokenizer ({len(tok)} tokens, mask id {tok.mask_token_id}) does not fit the model's logits vocabulary "
            f"of {V}"
        )


def load_policy(name, device, lora, gradient_checkpointing, compile, beta, distributed, master, sharded=False):
    """(π_θ, tokenizer, π_ref or None, the LoRA targets by name); lora: (rank r, α, target names or ()
    for the family's), r = 0 for full fine-tuning. Under DDP rank 0 loads first, so a hub model's
    remote code is fetched once, then the other ranks load it. With LoRA the reference policy is the
    model with its adapters disabled (no copy); without, a frozen copy; β = 0: none. sharded (FSDP):
    only rank 0 reads the weights (on the CPU; float32 on CUDA: the master weights); every rank builds
    the model with no weights, shards it and receives its part from rank 0, a tensor at a time from the
    safetensors files for full fine-tuning (streamed_policy), else from the whole model (sharded_policy). A model or
    target list that cannot be used raises ValueError naming the key."""
    import torch.distributed as dist

    on_cuda = device.startswith("cuda")
    where = dict(device="cpu", dtype=torch.float32 if on_cuda else None) if sharded else dict(device=device)
    files = streamed_files(name, master) if sharded and lora[0] == 0 else None
    for turn in range(2 if distributed else 1):
        if (turn == 0) == master:
            try:
                whole = master and sharded and files is None or not sharded
                model, tok = load(name, **where) if whole else load(name, empty=True)
            except ValueError as e:
                raise ValueError(f"--model_name_or_path: {e}") from None
        if distributed:
            dist.barrier()
    lora_r, lora_alpha, lora_targets = lora
    lora_targets = tuple(lora_targets or family_of(model).lora_targets)  # by name: a checkpoint records them
    if lora_r > 0:
        model = with_lora(model, lora, lora_targets, on_cuda)
    if files is not None:
        model, ref_model = streamed_policy(model, tok, files if master else None, gradient_checkpointing, beta, device)
    elif sharded:
        model, ref_model = sharded_policy(name, model, master, lora, lora_targets, gradient_checkpointing, beta, device)
    else:
        model, ref_model = with_reference(model, lora_r, gradient_checkpointing, beta)
    if compile:
        compile_layers(model)
    return model, tok, ref_model, lora_targets


def with_lora(model, lora, targets, on_cuda):
    """add_lora with lora = (r, α, ...); targets that match no module stop in one line naming the key."""
    try:
        return add_lora(model, lora[0], lora[1], targets, under_autocast=on_cuda)
    except ValueError as e:  # peft: no module of the model matches the targets
        raise ValueError(f"--lora_target_modules={targets}: {first_line(e)}") from None


def with_reference(model, lora_r, gradient_checkpointing, beta):
    """(π_θ with checkpointing set, π_ref or None): π_θ with its adapters disabled, else a frozen copy."""
    if gradient_checkpointing:
        set_gradient_checkpointing(model)
    ref_model = None
    if beta > 0:
        ref_model = model if lora_r > 0 else copy.deepcopy(unwrap(model)).eval().requires_grad_(False)
    return model, ref_model


def streamed_files(name, master):
    """Under FSDP, full fine-tuning: the safetensors files rank 0 streams the weights from, one tensor at a time
    (fsdp.stream_from_rank0), when the model is a folder of them holding every parameter under its name (None
    elsewhere, and on the other ranks a list whose length is all they use); else None on every rank, and rank
    0 loads the whole model (sharded_policy): the embedded model, .bin weights, names the model's code renames,
    a tensor of another shape than the model's (which the whole load refuses in one line)."""
    import torch.distributed as dist
    from safetensors import safe_open

    files, folder = None, shipped(name)
    if master and name not in EMBEDDED and not os.path.isdir(folder) and model_path_error(name) is None:
        try:  # a hub id: its weight files, fetched as from_pretrained would fetch them
            from huggingface_hub import snapshot_download

            folder = snapshot_download(name, allow_patterns=["*.safetensors", "*.json"])
        except Exception:  # no network, no such id: the whole load says why
            folder = None
    if master and name not in EMBEDDED and folder and os.path.isdir(folder):
        files = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".safetensors"))
        try:
            shapes = {}  # every stored tensor's shape: one of the wrong shape is for the whole load to refuse
            for f in files:
                with safe_open(f, "pt") as st:
                    shapes |= {k: tuple(st.get_slice(k).get_shape()) for k in st.keys()}
            built, _ = load(name, empty=True)
            wanted = dict([*built.named_parameters(), *fsdp.persistent_buffers(built)])
            found = {n: [k for k in keys if k in shapes] for n, keys in fsdp.stored_names(built).items()}
            if not files or any(not k or shapes[k[0]] != tuple(wanted[n].shape) for n, k in found.items()):
                files = None
        except Exception:  # a damaged file or a model that cannot be built: the whole load says why
            files = None
    decided = [files]
    dist.broadcast_object_list(decided, src=0)
    return decided[0]


def streamed_policy(model, tok, files, gradient_checkpointing, beta, device):
    """(π_θ, π_ref or None), sharded over the ranks, full fine-tuning: every rank built the model on the meta
    device; its weights are streamed from rank 0's safetensors files (fsdp.stream_from_rank0, float32 on CUDA:
    the master weights), into the policy and its reference at once, so no rank ever holds the whole model.
    What load() measures on a whole model is measured on the sharded one, every rank together: the weights'
    digest (from the whole tensors as they pass), the logits' width, whether padding is masked."""
    import torch.distributed as dist

    model, ref_model = with_reference(model, 0, gradient_checkpointing, beta)
    digest = hashlib.sha256()
    models = [m for m in (model, ref_model) if m is not None]
    dtype = torch.float32 if device.startswith("cuda") else None
    fsdp.stream_from_rank0(
        models, files, device, device.startswith("cuda"), dtype, functools.partial(add_to_digest, digest)
    )
    check_compatible(model, tok)
    honours = probe_padding_mask(model, tok.pad_token_id)
    fsdp.reshard(model)  # FSDP keeps the root's weights whole after a forward (for the backward it expects)
    for m in models:
        unwrap(m).honours_padding_mask, unwrap(m).weights_digest = honours, digest.hexdigest()
    dist.barrier()
    return model, ref_model


def sharded_policy(name, loaded, master, lora, lora_targets, gradient_checkpointing, beta, device):
    """(π_θ, π_ref or None), sharded over the ranks, from what each rank loaded (with its LoRA adapters):
    the whole model on rank 0, the model on the meta device on the others. Rank 0 builds the meta model
    too; every rank sets checkpointing and copies the reference from it (a copy of nothing), shards
    them, and rank 0 sends each tensor in turn (fsdp.shard_from_rank0): only rank 0 holds the whole
    model on its host (full fine-tuning of a folder of safetensors files: not even rank 0, streamed_policy).
    The ranks end as loading the whole model on every rank left them: the same
    parts, buffers and RNG state (tests/fsdp_loading.py)."""
    import torch.distributed as dist

    whole, model = (loaded, None) if master else (None, loaded)
    if master:
        with torch.random.fork_rng(devices=[]):  # the RNG as the whole model's adapters left it, as on the others
            model, _ = load(name, empty=True)
            if lora[0] > 0:
                model = with_lora(model, lora, lora_targets, device.startswith("cuda"))
    model, ref_model = with_reference(model, lora[0], gradient_checkpointing, beta)
    facts = [(unwrap(whole).honours_padding_mask, unwrap(whole).weights_digest) if master else None]
    dist.broadcast_object_list(facts, src=0)  # what rank 0 measured on the whole model
    for m in {id(m): m for m in (model, ref_model) if m is not None}.values():
        unwrap(m).honours_padding_mask, unwrap(m).weights_digest = facts[0]
        fsdp.shard_from_rank0(m, whole, device, mixed_precision=device.startswith("cuda"))
    return model, ref_model


def add_lora(model, rank, alpha, targets=(), under_autocast=False):
    """LoRA adapters (peft) on the modules whose names end in `targets` (() = the family's); only they
    are trained, and `disable_adapter()` gives the base model back as the reference policy. With
    LLaDA's names the suffix "ff_out" also adapts the output head (transformer.ff_out), as the paper's
    release does.

    peft keeps the adapters in float32 (right for Adam) and casts every adapter's input to float32:
    on a bf16 model that is a full copy of the activations, there and back, at each adapted layer.
    `under_autocast`: the model only ever runs under bf16 autocast, which casts the matmul inputs to
    bf16 anyway, so the copy changes no number (tested) and is skipped."""
    from peft import LoraConfig, get_peft_model
    from peft.tuners.tuners_utils import BaseTunerLayer

    targets = list(targets or family_of(model).lora_targets)
    model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets))
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.cast_input_dtype_enabled = not under_autocast
    return model


def merge_lora_float32(model):
    """The LoRA model as one plain model with W + (α/r)·BA folded in, in float32: folded into bf16, every
    adapted weight is rounded again and greedy text can differ from the trained (unmerged) model's; in
    float32 the sum is exact to float32 rounding, at twice bf16's memory."""
    return model.float().merge_and_unload()


def set_gradient_checkpointing(model):
    m = unwrap(model)
    if hasattr(getattr(m, "model", None), "set_activation_checkpointing"):
        # LLaDA's own mechanism; the Hugging Face flag does nothing for its remote code.
        from importlib import import_module

        strategy = import_module(type(m.model).__module__).ActivationCheckpointingStrategy.whole_layer
        m.model.set_activation_checkpointing(strategy)
    else:  # non-reentrant: gradients reach LoRA adapters even though the embeddings need none
        m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def compile_layers(model):
    """torch.compile each transformer layer in place (regional compilation): the layers share one
    code path, so one graph is compiled and reused by all, and norms, RoPE and SwiGLU fuse into few
    kernels. The vocabulary head and the position selection stay eager: their shapes depend on the
    data. Shapes that change (rows finishing, prompt lengths) recompile once, then run dynamic."""
    for layer in family_part(model, "layers"):  # LLaDA: block_group_size 1, as LLaDA-8B
        layer.compile()
    return model
