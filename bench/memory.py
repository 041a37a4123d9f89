"""Memory per GPU of an AGRPO run at LLaDA-8B's shape, by how it is distributed: DDP with LoRA, DDP
with full fine-tuning, FSDP with full fine-tuning (and with LoRA). A model of the memory, not a
measurement: parameter counts come from the model built on the meta device (no memory, no
download), activations from the layer shapes, and bytes per number from what train.py does.

    python bench/memory.py                              # configs/llada_gsm8k.py, 8 GPUs
    python bench/memory.py configs/llada_math.py --gpus=16 --prompt_length=512

What train.py holds on CUDA, per parameter (P: the model's, A: LoRA's):
  DDP + LoRA   bf16 base 2P; float32 adapters 4A, their gradients 4A, DDP's gradient buckets 4A, AdamW 8A
  DDP, full    bf16 weights 2P, gradients 2P, DDP's buckets 2P, AdamW moments in the weights' dtype 4P
  FSDP, full   float32 master weights, gradients and AdamW moments, (4 + 4 + 8)P / gpus; rollouts gather
               the whole model once in bf16 (2P) and free it before the update, which gathers one block
               at a time (two with prefetch)
  FSDP + LoRA  the float32 base 4P / gpus, adapters as above / gpus; rollouts gather 2P as above
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

from families import FAMILIES  # noqa: E402
from tiny_llada import TinyLLaDAConfig, TinyLLaDAModel  # noqa: E402

# --- config
gpus = 8  # GPUs the run is spread over (torchrun ranks, all nodes together) [1, inf)
prompt_length = 256  # prompt tokens of an update's rows (the run's prompts, padded; at most max_prompt_length)
gpu_memory_gib = 80.0  # what one GPU has (an H100: 80 GB)
# --- end of config

GIB = 2**30


def counts(lora_r, targets):
    """(P, A): the parameters of the LLaDA-8B-shaped model, and of its LoRA adapters of rank r on the
    Linear layers whose names end in one of `targets`, counted on the meta device."""
    with torch.device("meta"):
        model = TinyLLaDAModel(TinyLLaDAConfig(**LLADA_8B, mask_token_id=126336))
    P = sum(p.numel() for p in model.parameters())
    adapted = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.split(".")[-1] in targets]
    return P, sum(lora_r * (m.in_features + m.out_features) for m in adapted), len(adapted)


def activations(rows, tokens, checkpointing):
    """Bytes of the activations one update forward keeps for backward (bf16)."""
    h, f, n_layers = LLADA_8B["d_model"], LLADA_8B["d_ff"], LLADA_8B["n_layers"]
    per_layer = 2 * (8 * h + 4 * f) * rows * tokens
    return 2 * h * rows * tokens * n_layers + per_layer if checkpointing else per_layer * n_layers


def rollout_working_set(rows, tokens, block):
    """Bytes beyond the weights during a rollout step: one layer's activations (no grad: nothing is
    kept between layers) and the block's logits in float32 with float64 Gumbel noise."""
    h, f, V = LLADA_8B["d_model"], LLADA_8B["d_ff"], LLADA_8B["vocab_size"]
    return 2 * (4 * h + 3 * f) * rows * tokens + (4 + 8) * rows * block * V


def rows_of_table(P, A, n):
    """(setup, weights, gradients, optimizer, rollout gather, update extra) in bytes, per GPU."""
    block = 2 * P / LLADA_8B["n_layers"]  # one block's weights in bf16
    return [
        ("DDP + LoRA", 2 * P + 4 * A, 4 * A + 4 * A, 8 * A, 0, 0),
        ("DDP, full", 2 * P, 2 * P + 2 * P, 4 * P, 0, 0),
        ("FSDP, full", 4 * P / n, 4 * P / n, 8 * P / n, 2 * P, 2 * block + 4 * block),
        ("FSDP + LoRA", (4 * P + 4 * A) / n, 8 * A / n, 8 * A / n, 2 * P, 2 * block),
    ]


def main():
    args, cfg, _ = comparison_config(__file__, "configs/llada_gsm8k.py")
    targets = tuple(cfg["lora_target_modules"]) or FAMILIES["llada"].lora_targets
    lora_r = cfg["lora_r"] or 64
    P, A, n_adapted = counts(lora_r, targets)
    rows, tokens = cfg["per_device_train_batch_size"], args.prompt_length + cfg["max_completion_length"]
    rollout = rollout_working_set(rows, tokens, cfg["block_length"])
    print(
        f"# LLaDA-8B shape: {P / 1e9:.3f} B parameters; LoRA r {lora_r} on {n_adapted} layers ({', '.join(targets)}): "
        f"{A / 1e6:.1f} M; {args.gpus} GPUs of {args.gpu_memory_gib:g} GiB"
    )
    print(
        f"# update forward: {rows} rows x ({args.prompt_length} prompt + {cfg['max_completion_length']} completion) "
        f"tokens; rollout: {rows} rows, blocks of {cfg['block_length']}; beta {cfg['beta']} (beta > 0 with full "
        "fine-tuning adds a frozen reference copy, sharded like the weights under FSDP)"
    )
    head = f"fits {args.gpu_memory_gib:g} GiB (ckpt)"
    print(f"| setup | weights | grads | AdamW | rollout peak | update peak, no ckpt | update peak, ckpt | {head} |")
    print("|---|---|---|---|---|---|---|---|")
    for name, weights, grads, optim, gather, extra in rows_of_table(P, A, args.gpus):
        resident = weights + grads + optim
        # the update's gradients exist only while it runs; the rollout keeps weights and optimizer state
        at_rollout = weights + optim + gather + rollout
        peaks = [resident + extra + activations(rows, tokens, ckpt) for ckpt in (False, True)]
        fits = "yes" if max(at_rollout, peaks[1]) <= args.gpu_memory_gib * GIB else "no"
        fits += " (bf16 weights: AdamW steps below their rounding are lost)" if name == "DDP, full" else ""
        cells = [weights, grads, optim, at_rollout, *peaks]
        print(f"| {name} | " + " | ".join(f"{c / GIB:.1f}" for c in cells) + f" | {fits} |")
    print("(GiB per GPU; the CUDA context, workspace and the allocator's fragmentation, about 1-3 GiB, not counted)")


if __name__ == "__main__":
    main()
