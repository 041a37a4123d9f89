"""Memory per GPU of an AGRPO run at LLaDA-8B's shape, by how it is distributed: DDP with LoRA, DDP
with full fine-tuning, FSDP with full fine-tuning (and with LoRA). A model of the memory, not a
measurement: parameter counts come from the model built on the meta device (no memory, no
download), activations from the layer shapes, and bytes per number from what train.py does.

    python bench/memory.py                              # configs/llada_gsm8k.py, 8 GPUs
    python bench/memory.py configs/llada_math.py --gpus=16 --prompt_length=512
    torchrun --nproc_per_node 1 bench/memory.py --gpus=1 --n_layers=4 --measure   # the model against CUDA's peaks

What train.py holds on CUDA, per parameter (P: the model's, A: LoRA's):
  DDP + LoRA   bf16 base 2P; float32 adapters 4A, their gradients 4A, DDP's gradient buckets 4A, AdamW 8A
  DDP, full    bf16 weights 2P, gradients 2P, DDP's buckets 2P, AdamW moments in the weights' dtype 4P
  FSDP, full   float32 master weights, gradients and AdamW moments, (4 + 4 + 8)P / gpus; rollouts gather
               the whole model once in bf16 (2P) and free it before the update, which gathers one layer
               at a time (two with prefetch)
  FSDP + LoRA  the float32 base 4P / gpus, adapters as above / gpus; rollouts gather 2P as above
The optimizer step (after backward: activations freed) holds weights, gradients and moments, and what the
step itself allocates: torch's fused AdamW (plumbing/optim.py) updates in place, and the gradient clip and
the finiteness checks add one number per tensor, so nothing the size of the weights (column "step peak";
torch's foreach AdamW, its default on CUDA, would add a copy of the trained weights' size).
Activations kept for backward, per token and layer, in bf16 (attention by a fused kernel: no L x L
matrix): the two norms' inputs and outputs, q, k, v, the attention output, and SwiGLU's gate, up,
activation and product: 8·d_model + 4·d_ff numbers. With gradient checkpointing: each layer's input
(d_model), plus one layer's whole set while it is recomputed. An update forward runs
per_device_train_batch_size rows of prompt_length + max_completion_length tokens; a rollout step
holds one layer's working set and the current block's logits (float32, plus float64 Gumbel noise).
"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import LLADA_8B, comparison_config  # noqa: E402

from plumbing.families import FAMILIES  # noqa: E402
from plumbing.tiny_llada import TinyLLaDAConfig, TinyLLaDAModel  # noqa: E402

# --- config
gpus = 8  # GPUs the run is spread over (torchrun ranks, all nodes together) [1, inf)
prompt_length = 256  # prompt tokens of an update's rows (the run's prompts, padded; at most max_prompt_length)
gpu_memory_gib = 80.0  # what one GPU has (an H100: 80 GB)
n_layers = 32  # transformer layers of the LLaDA-8B shape (fewer: a stand-in small enough to measure on one GPU)
measure = False  # also run FSDP full fine-tuning at this shape and print its measured peaks (CUDA, under torchrun)
# --- end of config

GIB = 2**30
STEP_TEMPORARIES = 0  # bytes the optimizer step allocates beyond weights, gradients and moments (fused AdamW)


def llada_shape(n_layers):
    return dict(LLADA_8B, n_layers=n_layers)


def counts(shape, lora_r, targets):
    """(P, A, adapted layers): the parameters of the LLaDA-8B-shaped model, and of its LoRA adapters of
    rank r on the Linear layers whose names end in one of `targets`, counted on the meta device."""
    with torch.device("meta"):
        model = TinyLLaDAModel(TinyLLaDAConfig(**shape, mask_token_id=126336))
    P = sum(p.numel() for p in model.parameters())
    adapted = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.split(".")[-1] in targets]
    return P, sum(lora_r * (m.in_features + m.out_features) for m in adapted), len(adapted)


def activations(shape, rows, tokens, checkpointing):
    """Bytes of the activations one update forward keeps for backward (bf16)."""
    h, f, n_layers = shape["d_model"], shape["d_ff"], shape["n_layers"]
    per_layer = 2 * (8 * h + 4 * f) * rows * tokens
    return 2 * h * rows * tokens * n_layers + per_layer if checkpointing else per_layer * n_layers


def rollout_working_set(shape, rows, tokens, block):
    """Bytes beyond the weights during a rollout step: one layer's activations (no grad: nothing is
    kept between layers) and the block's logits in float32 with float64 Gumbel noise."""
    h, f, V = shape["d_model"], shape["d_ff"], shape["vocab_size"]
    return 2 * (4 * h + 3 * f) * rows * tokens + (4 + 8) * rows * block * V


def rows_of_table(shape, P, A, n):
    """(setup, weights, gradients, optimizer, rollout gather, update extra) in bytes, per GPU. FSDP's
    update also holds the root (embeddings, head: R parameters) gathered in bf16 from forward to the
    end of backward, with its bf16 gradient and the float32 copy reduced, and the next layer prefetched."""
    R = 2 * shape["vocab_size"] * shape["d_model"] + shape["d_model"]
    layer = (P - R) / shape["n_layers"]
    return [
        ("DDP + LoRA", 2 * P + 4 * A, 4 * A + 4 * A, 8 * A, 0, 0),
        ("DDP, full", 2 * P, 2 * P + 2 * P, 4 * P, 0, 0),
        ("FSDP, full", 4 * P / n, 4 * P / n, 8 * P / n, 2 * P, (2 + 2 + 4) * R + (2 * 2 + 2 + 4) * layer),
        ("FSDP + LoRA", (4 * P + 4 * A) / n, 8 * A / n, 8 * A / n, 2 * P, 2 * R + 2 * 2 * layer),
    ]


def measured_fsdp_full(shape, rows, tokens, block, checkpointing):
    """CUDA's peak allocated bytes of FSDP full fine-tuning at `shape` on this rank: (update: a forward
    and backward of `rows` x `tokens`, the vocabulary head on 1/24 of the positions, then AdamW's step;
    rollout: the model gathered, a no-grad forward with the head on one block). Random weights."""
    from plumbing import fsdp
    from plumbing.logits import forward_logits
    from plumbing.model import set_gradient_checkpointing
    from plumbing.optim import make_optimizer

    model = TinyLLaDAModel(TinyLLaDAConfig(**shape, mask_token_id=126336))  # float32 on the CPU, as train.py loads
    if checkpointing:
        set_gradient_checkpointing(model)
    fsdp.shard(model, mixed_precision=True)
    opt, _ = make_optimizer(1e-6, list(model.parameters()), total_steps=2)
    g = torch.Generator(device="cuda").manual_seed(0)
    ids = torch.randint(0, 126000, (rows, tokens), device="cuda", generator=g)
    read = torch.rand(rows, tokens, device="cuda", generator=g) < 1 / 24
    bf16 = torch.autocast("cuda", dtype=torch.bfloat16)
    peaks = {}
    for _ in range(2):  # the second step is the steady state: AdamW's moments exist
        torch.cuda.reset_peak_memory_stats()
        with bf16:
            forward_logits(model, ids, at=read).float().logsumexp(-1).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        peaks["update"] = torch.cuda.max_memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    with torch.no_grad(), fsdp.gathered(model), bf16:
        logits = forward_logits(model, ids, at=(slice(None), slice(tokens - block, tokens))).float()
        logits - torch.rand(logits.shape, dtype=torch.float64, device="cuda").log().neg().log()  # Gumbel noise
    peaks["rollout"] = torch.cuda.max_memory_allocated()
    return peaks


def main():
    args, cfg, _ = comparison_config(__file__, "configs/llada_gsm8k.py")
    out = print if int(os.environ.get("RANK", 0)) == 0 else (lambda *a: None)  # under torchrun: rank 0 prints
    shape = llada_shape(args.n_layers)
    targets = tuple(cfg["lora_target_modules"]) or FAMILIES["llada"].lora_targets
    lora_r = cfg["lora_r"] or 64
    P, A, n_adapted = counts(shape, lora_r, targets)
    rows, tokens = cfg["per_device_train_batch_size"], args.prompt_length + cfg["max_completion_length"]
    rollout = rollout_working_set(shape, rows, tokens, cfg["block_length"])
    out(
        f"# LLaDA-8B shape, {args.n_layers} layers: {P / 1e9:.3f} B parameters; LoRA r {lora_r} on {n_adapted} layers "
        f"({', '.join(targets)}): {A / 1e6:.1f} M; {args.gpus} GPUs of {args.gpu_memory_gib:g} GiB"
    )
    out(
        f"# update forward: {rows} rows x ({args.prompt_length} prompt + {cfg['max_completion_length']} completion) "
        f"tokens; rollout: {rows} rows, blocks of {cfg['block_length']}; beta {cfg['beta']} (beta > 0 with full "
        "fine-tuning adds a frozen reference copy, sharded like the weights under FSDP)"
    )
    head = f"fits {args.gpu_memory_gib:g} GiB (ckpt)"
    columns = "weights | grads | AdamW | rollout peak | update peak, no ckpt | update peak, ckpt | step peak"
    out(f"| setup | {columns} | {head} |")
    out("|---|---|---|---|---|---|---|---|---|")
    model = {}
    for name, weights, grads, optim, gather, extra in rows_of_table(shape, P, A, args.gpus):
        resident = weights + grads + optim
        # the update's gradients exist only while it runs; the rollout keeps weights and optimizer state
        at_rollout = weights + optim + gather + rollout
        peaks = [resident + extra + activations(shape, rows, tokens, ckpt) for ckpt in (False, True)]
        at_step = resident + STEP_TEMPORARIES  # fused AdamW: in place
        model[name] = dict(rollout=at_rollout, update=peaks, step=at_step)
        fits = "yes" if max(at_rollout, peaks[1], at_step) <= args.gpu_memory_gib * GIB else "no"
        fits += " (bf16 weights: AdamW steps below their rounding are lost)" if name == "DDP, full" else ""
        cells = [weights, grads, optim, at_rollout, *peaks, at_step]
        out(f"| {name} | " + " | ".join(f"{c / GIB:.1f}" for c in cells) + f" | {fits} |")
    out("(GiB per GPU; the CUDA context, workspace and the allocator's fragmentation, about 1-3 GiB, not counted)")
    if args.measure:  # under torchrun on CUDA: the FSDP rows of this table against what CUDA allocates
        import torch.distributed as dist

        dist.init_process_group("nccl")
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        predicted = model["FSDP, full"]
        for ckpt in (False, True):
            peaks = measured_fsdp_full(shape, rows, tokens, cfg["block_length"], ckpt)
            print(
                f"measured FSDP, full, {dist.get_world_size()} GPUs, checkpointing {ckpt}: update peak "
                f"{peaks['update'] / GIB:.1f} GiB (model {predicted['update'][ckpt] / GIB:.1f}), rollout peak "
                f"{peaks['rollout'] / GIB:.1f} GiB (model {predicted['rollout'] / GIB:.1f}); "
                f"torch.cuda.max_memory_allocated on rank {dist.get_rank()}, {torch.cuda.get_device_name()}"
            )
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
