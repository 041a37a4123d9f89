"""Run under torchrun by tests/test_fsdp.py: each rank loads a model for --fsdp (model.load_policy,
sharded: rank 0 reads the weights, every rank builds the model on the meta device and receives its
part), then loads it as --fsdp did before (the whole model on every rank, then sharded), and writes
what it saw:

    torchrun --nproc_per_node 2 tests/fsdp_loading.py OUT MODEL [MODEL ...]   # OUT/rank{r}.json

For each model: full fine-tuning with a reference copy (β > 0), and LoRA with checkpointing. The
embedded model's layers are given two buffers here, a rotary table outside the state dict and one in it,
and a projection its code creates on the CPU by name (as LLaDA's code does);
MODEL "tiny_tied" is the embedded model with its head tied to its embeddings (as some small models have it).
"""

import copy
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from plumbing import ddp, fsdp, model, tiny_llada  # noqa: E402
from plumbing.families import family_of  # noqa: E402
from plumbing.logits import forward_logits  # noqa: E402

plain_block_init = tiny_llada.Block.__init__


def block_with_buffers(self, c):
    plain_block_init(self, c)
    self.q_proj = torch.nn.Linear(c.d_model, c.d_model, bias=False, device="cpu")  # placed by name, as LLaDA's are
    D = c.d_model // c.n_heads
    self.register_buffer("inv_freq", 1.0 / c.rope_theta ** (torch.arange(0, D, 2).float() / D), persistent=False)
    self.register_buffer("scale", torch.linspace(0.5, 1.5, D), persistent=True)


tiny_llada.Block.__init__ = block_with_buffers

seen = dict(whole_loads=0, bytes_at_shard=0, recording=False)
plain_load, plain_shard = model.load, fsdp.shard


def counted_load(*a, **k):
    seen["whole_loads"] += seen["recording"] and not k.get("empty", False)
    return plain_load(*a, **k)


def counted_shard(m, *a, **k):  # the bytes of real (not meta) weights the model holds when it is sharded
    if seen["recording"]:
        seen["bytes_at_shard"] += sum(p.numel() * p.element_size() for p in m.parameters() if not p.is_meta)
    return plain_shard(m, *a, **k)


model.load, fsdp.shard = counted_load, counted_shard


def whole_on_every_rank(name, lora, gradient_checkpointing, beta):
    """How --fsdp loaded before: every rank the whole model, then its part kept."""
    policy, tok = plain_load(name)
    if lora[0] > 0:
        policy = model.add_lora(policy, lora[0], lora[1], family_of(policy).lora_targets)
    if gradient_checkpointing:
        model.set_gradient_checkpointing(policy)
    ref = None
    if beta > 0:
        ref = policy if lora[0] > 0 else copy.deepcopy(policy).eval().requires_grad_(False)
    for m in {id(m): m for m in (policy, ref) if m is not None}.values():
        plain_shard(m, mixed_precision=False)
    return policy, ref


def tensors(m):
    named = [*m.named_parameters(), *m.named_buffers()]
    return {n: (fsdp.local(t).detach(), t.requires_grad, str(getattr(t, "placements", ""))) for n, t in named}


def same(a, b):
    ta, tb = tensors(a), tensors(b)
    ok = ta.keys() == tb.keys()
    for n in ta.keys() & tb.keys():
        (x, gx, px), (y, gy, py) = ta[n], tb[n]
        ok &= x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y) and gx == gy and px == py
    return bool(ok)


def check(name, lora, gradient_checkpointing, beta, rank):
    if name == "tiny_tied":  # transformers ties the head returned here to the input embeddings
        tiny_llada.TinyLLaDAModel.get_output_embeddings = lambda self: self.model.transformer["ff_out"]
        try:
            return check("tiny", lora, gradient_checkpointing, beta, rank)
        finally:
            del tiny_llada.TinyLLaDAModel.get_output_embeddings
    torch.manual_seed(0)
    seen.update(whole_loads=0, bytes_at_shard=0, recording=True)
    policy, _, ref, _ = model.load_policy(
        name, "cpu", lora, gradient_checkpointing, False, beta, True, rank == 0, sharded=True
    )
    seen["recording"] = False
    rng = torch.get_rng_state()
    torch.manual_seed(0)
    old_policy, old_ref = whole_on_every_rank(name, lora, gradient_checkpointing, beta)
    ids = torch.randint(5, 60, (2, 12), generator=torch.Generator().manual_seed(rank))
    models = [policy, ref or policy, old_policy, old_ref or old_policy]
    with torch.no_grad(), fsdp.gathered(*{id(m): m for m in models}.values()):
        logits = [forward_logits(m, ids) for m in models]
    base, old_base = fsdp.unwrap(policy), fsdp.unwrap(old_policy)
    return dict(
        policy_equal=same(policy, old_policy),
        ref_equal=(ref is None) == (old_ref is None) and (ref is None or same(ref, old_ref)),
        ref_is_policy=ref is policy,
        logits_equal=torch.equal(logits[0], logits[2]) and torch.equal(logits[1], logits[3]),
        buffers=sorted({n.split(".")[-1] for n, _ in policy.named_buffers()}),
        rng_equal=torch.equal(rng, torch.get_rng_state()),
        facts_equal=(base.honours_padding_mask, base.weights_digest)
        == (old_base.honours_padding_mask, old_base.weights_digest),
        whole_loads=seen["whole_loads"],
        bytes_at_shard=seen["bytes_at_shard"],
        local_bytes=sum(fsdp.local(p).numel() * p.element_size() for p in policy.parameters()),
        whole_bytes=sum(p.numel() * p.element_size() for p in policy.parameters()),
        head_tied=base.model.transformer["ff_out"].weight is base.model.transformer["wte"].weight,
    )


def float32_master(name, rank):
    """CUDA's case: rank 0 loads in float32 (the master weights) a model whose config builds it in bf16."""
    whole = plain_load(name, dtype=torch.float32)[0] if rank == 0 else None
    built = plain_load(name, empty=True)[0].to(torch.bfloat16)
    fsdp.shard_from_rank0(built, whole, "cpu", mixed_precision=False)
    old = plain_shard(plain_load(name, dtype=torch.float32)[0], mixed_precision=False)
    return dict(float32_equal=same(built, old), dtypes=sorted({str(p.dtype) for p in built.parameters()}))


# the processes started and ended as train.py's are: the sharded models hold the group past its destruction
with ddp.rank_end(), ddp.processes(sharded=True):
    rank = dist.get_rank()
    settings = [((0, 0, ()), False, 0.04), ((4, 8, ()), True, 0.04)]
    rows = [check(name, *setting, rank) for name in sys.argv[2:] for setting in settings]
    rows.append(float32_master(sys.argv[2], rank))
    with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as f:
        json.dump(rows, f)
