"""Memory per GPU of an AGRPO run at LLaDA-8B's shape, by how it is distributed: DDP with LoRA, DDP
with full fine-tuning, FSDP with full fine-tuning (and with LoRA), and the bytes each rank sends per
step. A model of the memory: parameter counts come from the model built on the meta device (no memory,
no download), the bytes kept for backward from the layer's code term by term (`layer_saved`, checked
against torch's saved-tensor hooks in tests/test_bench.py and at 8B width on the CPU by --measure_cpu),
and bytes per number from what train.py does.

    python bench/memory.py                              # configs/llada_gsm8k.py, 8 GPUs
    python bench/memory.py configs/llada_math.py --gpus=16 --beta=0.04
    python bench/memory.py --n_layers=2 --measure_cpu --per_device_train_batch_size=1   # against the CPU
    torchrun --nproc_per_node 1 bench/memory.py --gpus=1 --n_layers=4 --measure   # the model against CUDA's peaks

What train.py holds on CUDA, per parameter (P: the model's, A: LoRA's):
  DDP + LoRA   bf16 base 2P; float32 adapters 4A, their gradients 4A, DDP's gradient buckets 4A, AdamW 8A
  DDP, full    bf16 weights 2P, gradients 2P, DDP's buckets 2P, AdamW moments in the weights' dtype 4P
  FSDP, full   float32 master weights, gradients and AdamW moments, (4 + 4 + 8)P / gpus; rollouts gather
               the whole model once in bf16 (2P) and free it before the update, which gathers one layer
               at a time (two with prefetch)
  FSDP + LoRA  the float32 base 4P / gpus, adapters as above / gpus; rollouts gather 2P as above
At beta > 0 the reference policy is the LoRA model with its adapters off (nothing more); with full
fine-tuning a frozen copy: bf16 2P under DDP, float32 4P / gpus under FSDP, gathered in bf16 (2P) beside
the policy for the rollouts and their reference log-probs (plumbing/fsdp.gathered).
The optimizer step (after backward: activations freed) holds weights, gradients and moments, and what the
step itself allocates: torch's fused AdamW (plumbing/optim.py) updates in place, and the gradient clip and
the finiteness checks add one number per tensor, so nothing the size of the weights (column "step peak";
--measure_cpu measures it; torch's foreach AdamW, its default on CUDA, would add a copy of the weights).
An update forward runs per_device_train_batch_size rows of the preset's longest prompt (max_prompt_length)
plus max_completion_length tokens, one draw a forward (LLaDA's draws do not pack), and keeps for backward
what `layer_saved` counts per layer, the final norm over every token, and the vocabulary head on the
positions the draw reads only; backward holds besides, at its widest, SwiGLU's four gradients of d_ff
numbers a token. With gradient checkpointing: each layer's input (d_model), plus one layer's whole set
while it is recomputed. A rollout step holds one layer's working set and the current
block's logits (float32, plus float64 Gumbel noise).
"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import LLADA_8B, comparison_config  # noqa: E402
from memory_measure import draw_forward, measured_fsdp_full, peak_rss, rss, saved_by_layer, stand_in  # noqa: E402

from plumbing.families import FAMILIES  # noqa: E402
from plumbing.tiny_llada import TinyLLaDAConfig, TinyLLaDAModel  # noqa: E402
from sample import transfer_schedule  # noqa: E402

# --- config
gpus = 8  # GPUs the run is spread over (torchrun ranks, all nodes together) [1, inf)
prompt_length = 0  # prompt tokens of an update's rows (0: the preset's max_prompt_length, the longest it allows)
gpu_memory_gib = 80.0  # what one GPU has (an H100: 80 GB)
n_layers = 32  # transformer layers of the LLaDA-8B shape (fewer: a stand-in small enough to measure on one GPU)
measure = False  # also run FSDP full fine-tuning at this shape and print its measured peaks (CUDA, under torchrun)
measure_cpu = False  # also measure one draw's forward+backward (bf16; --lora_r=0: full, ends frozen) and AdamW's step
# --- end of config

GIB = 2**30
STEP_TEMPORARIES = 0  # bytes the optimizer step allocates beyond weights, gradients and moments (fused AdamW)
LAYER_LINEARS = dict(q_proj="qkv", k_proj="qkv", v_proj="qkv", attn_out="attn_out", ff_proj="ffn", up_proj="ffn")
LAYER_LINEARS.update(ff_out="ff_out")  # name in the layer -> the input it reads (q, k, v share one; gate and up one)
# policy_logprobs keeps per position read and vocabulary entry, with top-k and top-p on (the presets' truncation):
# two float32 softmaxes of the top-p sort and the float32 log-softmax (12), the sort order in int64 (8), the top-k
# and top-p masks (2); plus top-k's int64 indices
HEAD_BYTES_PER_LOGIT = 3 * 4 + 8 + 2


def llada_shape(n_layers):
    return dict(LLADA_8B, n_layers=n_layers)


def counts(shape, lora_r, targets):
    """(P, A, adapted layers, {name in a layer: (in, out)} of the adapted ones): the parameters of the
    LLaDA-8B-shaped model, and of its LoRA adapters of rank r on the Linear layers whose names end in
    one of `targets`, counted on the meta device."""
    with torch.device("meta"):
        model = TinyLLaDAModel(TinyLLaDAConfig(**shape, mask_token_id=126336))
    P = sum(p.numel() for p in model.parameters())
    adapted = [
        (n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.split(".")[-1] in targets
    ]
    A = sum(lora_r * (m.in_features + m.out_features) for _, m in adapted)
    in_layer = {n.split(".")[-1]: (m.in_features, m.out_features) for n, m in adapted if ".blocks.0." in n}
    head_r = lora_r if any(n == "model.transformer.ff_out" for n, _ in adapted) else 0
    return P, A, len(adapted), in_layer, head_r


def layer_saved(shape, rows, positions, lora_r, adapted, frozen_input=False):
    """Bytes one transformer layer (plumbing/tiny_llada.Block, LLaDA's layout) keeps for backward, computing
    in bf16 (CUDA's autocast or FSDP's bf16 gathers), for rows x positions tokens. lora_r 0: every weight
    of the layer trains; else only the adapters on the layers named in `adapted` ({name: (in, out)}).
    frozen_input: the layer's input needs no gradient (the first layer when the embeddings are frozen, as
    under LoRA), so its attention norm keeps only what its own weight's gradient needs, and its q, k, v
    adapters need no copy of A."""
    h, f, H, r = shape["d_model"], shape["d_ff"], shape["n_heads"], lora_r
    norm_trains = 4 * h if not r else 0  # a trained norm weight's gradient needs its float32 normalised input
    read_by = {LAYER_LINEARS[n] for n in (adapted if r else LAYER_LINEARS)}  # Linear inputs kept for a trained weight
    per_token = (
        (2 - frozen_input) * (4 * h + 4)  # each RMSNorm's float32 copy of its input and its 1/rms (float32 compute)
        + 2 * norm_trains
        + 2 * h * len(read_by & {"qkv", "attn_out", "ffn"})  # the norms' bf16 outputs and the attention output
        + (4 * 2 * h + 4 * H)  # the attention kernel: q, k, v, its output, and a float32 log-sum-exp per head
        + 3 * 2 * f  # SwiGLU: gate, silu(gate), up
        + 2 * f * ("ff_out" in read_by)  # their product, ff_out's input
        + 2 * r * len(adapted)  # each adapter's A·x
    )
    per_position = 4 * (h // H)  # rotary cos and sin for q and for k, bf16, shared by the rows
    per_layer = (2 - frozen_input) * 4 * h  # the norms' weights in float32
    # autocast's bf16 copies of each adapter's A and B (an input that needs no gradient needs no A)
    qkv_a = frozen_input * sum(2 * r * adapted[n][0] for n in ("q_proj", "k_proj", "v_proj") if n in adapted)
    per_layer += sum(2 * r * (i + o) for i, o in adapted.values()) - qkv_a
    return per_token * rows * positions + per_position * positions + per_layer


def head_saved(shape, rows, positions, read, lora_r, head_r, top_k, ends_train=True):
    """Bytes the rest of the model keeps for one forward: the final norm over every token (as a layer's
    norm), and at the `read` positions of each row the head's input (when the head or its adapter trains),
    its adapter's A·x and weight copies (head_r: its rank, 0 for none), and policy_logprobs' tensors.
    ends_train (full fine-tuning): the embeddings and head train, the token ids kept for the embedding."""
    h, V, tokens, n = shape["d_model"], shape["vocab_size"], rows * positions, rows * read
    full = not lora_r
    final_norm = tokens * (4 * h + 4 + 4 * h * full) + 4 * h
    ids = 8 * tokens * (full and ends_train)
    head = n * (2 * h * (head_r > 0 or (full and ends_train)) + 2 * head_r + HEAD_BYTES_PER_LOGIT * V + 8 * top_k)
    select = tokens + 8 * n  # the bool mask of the positions read, and the read tokens' ids that gather their log-probs
    return final_norm + ids + head + select + 2 * head_r * (h + V)


def activations(shape, rows, positions, read, lora_r, adapted, head_r, top_k, checkpointing, ends_train=True):
    """Bytes one update forward keeps for backward. With checkpointing each layer keeps its input (bf16)
    and the layer being recomputed its whole set."""
    embeddings_frozen = lora_r > 0 or not ends_train
    first = layer_saved(shape, rows, positions, lora_r, adapted, frozen_input=embeddings_frozen)
    rest = layer_saved(shape, rows, positions, lora_r, adapted)
    n = shape["n_layers"]
    layers = first + (n - 1) * rest
    if checkpointing:
        layers = 2 * shape["d_model"] * rows * positions * n + rest
    return layers + head_saved(shape, rows, positions, read, lora_r, head_r, top_k, ends_train)


def backward_working_set(shape, rows, positions):
    """Bytes backward holds beyond what the forward kept and the weights' gradients: at its widest, SwiGLU's
    backward, the bf16 gradients of the product, silu(gate), up and gate (4 x d_ff numbers a token)."""
    return 4 * 2 * shape["d_ff"] * rows * positions


def rollout_working_set(shape, rows, tokens, block):
    """Bytes beyond the weights during a rollout step: one layer's activations (no grad: nothing is
    kept between layers) and the block's logits in float32 with float64 Gumbel noise."""
    h, f, V = shape["d_model"], shape["d_ff"], shape["vocab_size"]
    return 2 * (4 * h + 3 * f) * rows * tokens + (4 + 8) * rows * block * V


def rows_of_table(shape, P, A, n, beta):
    """(setup, weights, gradients, optimizer, reference, rollout gather, update extra) in bytes, per GPU.
    FSDP's update also holds the root (embeddings, head: R parameters) gathered in bf16 from forward to
    the end of backward, with its bf16 gradient and the float32 copy reduced, and the next layer prefetched."""
    R = 2 * shape["vocab_size"] * shape["d_model"] + shape["d_model"]
    layer = (P - R) / shape["n_layers"]
    ref = 1 if beta > 0 else 0  # LoRA's reference is its base: no memory
    return [
        ("DDP + LoRA", 2 * P + 4 * A, 4 * A + 4 * A, 8 * A, 0, 0, 0),
        ("DDP, full", 2 * P, 2 * P + 2 * P, 4 * P, ref * 2 * P, 0, 0),
        (
            "FSDP, full",
            4 * P / n,
            4 * P / n,
            8 * P / n,
            ref * 4 * P / n,
            (1 + ref) * 2 * P,
            (2 + 2 + 4) * R + (2 * 2 + 2 + 4) * layer,
        ),
        ("FSDP + LoRA", (4 * P + 4 * A) / n, 8 * A / n, 8 * A / n, 0, 2 * P, 2 * R + 2 * 2 * layer),
    ]


def collective_bytes(name, P, A, R, n, passes, mu, beta):
    """Bytes each rank sends in one step (ring collectives: an all-gather or reduce-scatter of S bytes
    sends S(n-1)/n, an all-reduce twice that). DDP: the trained gradients all-reduced once per inner
    iteration (only the last backward syncs). FSDP: per forward-backward pass, the weights all-gathered in
    bf16 for the forward and again for the backward (the root stays gathered) and the trained gradients
    reduce-scattered in float32 after it; per step the rollouts' gather of the whole model in bf16 (and of
    the reference at beta > 0 with full fine-tuning)."""
    ring = (n - 1) / n
    lora = "LoRA" in name
    trained = 4 * A if lora else (4 if "FSDP" in name else 2) * P
    if "DDP" in name:
        return mu * 2 * ring * trained
    gathers = 2 * P + 2 * (P - R) + (2 * A + 2 * A if lora else 0)
    rollout = 2 * P * (1 + (beta > 0 and not lora))
    return ring * (passes * (gathers + trained) + rollout)


def measure_on_cpu(shape, cfg, rows, positions, prompt, read, lora_r, targets, out):
    """The model against the CPU at `shape`: the bytes one draw's forward keeps (saved-tensor hooks) per
    layer and in all, the peak resident memory over its forward and backward above what was resident
    before it (against the bytes kept plus the trained weights' gradients), and the peak of two fused AdamW
    steps with the clip and the finiteness check (train.py's step) on one float32 layer above weights,
    gradients and moments (against STEP_TEMPORARIES)."""
    from plumbing.optim import clipped_step, finite_weights, make_optimizer
    from plumbing.tiny_llada import Block

    P, A, _, adapted, head_r = counts(shape, lora_r, targets)
    model = stand_in(shape, cfg, lora_r, targets)
    trained = [p for p in model.parameters() if p.requires_grad]
    grads = sum(p.numel() * p.element_size() for p in trained)
    forward = draw_forward(model, cfg, rows, positions, prompt, read)
    before = rss()
    with peak_rss() as peak:
        loss, saved = saved_by_layer(model, forward)
        loss.backward()
    # the stand-in's embeddings are frozen either way: the first layer's input needs no gradient
    model_layer = [layer_saved(shape, rows, positions, lora_r, adapted, frozen_input=i == 0) for i in (0, 1)]
    model_all = activations(
        shape, rows, positions, read, lora_r, adapted, head_r, cfg["top_k"], False, ends_train=False
    )
    kind = f"LoRA r {lora_r}" if lora_r else "full fine-tuning (embeddings and head frozen)"
    out(
        f"# measured on the CPU: {shape['n_layers']} layers, {kind}, {rows} rows x {positions} tokens ({prompt} "
        f"prompt), head on {read} positions a row, bf16 autocast; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    tokens = rows * positions
    for i in sorted(k for k in saved if k != "rest"):
        m = model_layer[min(i, 1)]
        out(
            f"layer {i} keeps {saved[i] / tokens / 1024:.1f} KiB a token (model {m / tokens / 1024:.1f}; "
            f"{100 * (m - saved[i]) / saved[i]:+.2f}%; the layout the model had before float32 norms: "
            f"{2 * (8 * shape['d_model'] + 4 * shape['d_ff']) / 1024:.1f})"
        )
    total = sum(saved.values())
    difference = 100 * (model_all - total) / total
    out(f"the forward keeps {total / GIB:.3f} GiB (model {model_all / GIB:.3f}; {difference:+.2f}%)")
    working = backward_working_set(shape, rows, positions)
    grew, predicted = peak["peak"] - before, model_all + grads + working
    out(
        f"peak resident memory over forward + backward: {grew / GIB:.3f} GiB above the {before / GIB:.2f} GiB before "
        f"(model: kept {model_all / GIB:.3f} + gradients {grads / GIB:.3f} + backward's working set "
        f"{working / GIB:.3f} = {predicted / GIB:.3f}; "
        f"{100 * (predicted - grew) / grew:+.1f}%)"
    )
    del model, loss, trained, forward  # the 8B stand-in freed before the optimizer layer is built
    layer = Block(TinyLLaDAConfig(**shape))  # float32, as FSDP's master weights
    params = list(layer.parameters())
    opt, _ = make_optimizer(1e-6, params, total_steps=4)
    for _ in range(2):  # the second step is the steady state: AdamW's moments exist
        for p in params:
            p.grad = torch.randn_like(p)
        before = rss()
        with peak_rss() as peak:
            clipped_step(opt, cfg["max_grad_norm"])
            finite_weights(params)
    size = sum(p.numel() * 4 for p in params)
    out(
        f"fused AdamW step, clip and finiteness check on one float32 layer ({size / GIB:.2f} GiB of weights): peak "
        f"{(peak['peak'] - before) / 2**20:.1f} MiB above weights, gradients and moments (model {STEP_TEMPORARIES})"
    )


def main():
    args, cfg, _ = comparison_config(__file__, "configs/llada_gsm8k.py")
    out = print if int(os.environ.get("RANK", 0)) == 0 else (lambda *a: None)  # under torchrun: rank 0 prints
    shape = llada_shape(args.n_layers)
    targets = tuple(cfg["lora_target_modules"]) or FAMILIES["llada"].lora_targets
    lora_r = cfg["lora_r"] or 64
    P, A, n_adapted, adapted, head_r = counts(shape, lora_r, targets)
    prompt, G = args.prompt_length or cfg["max_prompt_length"], cfg["max_completion_length"]
    rows, positions, block, beta = cfg["per_device_train_batch_size"], prompt + G, cfg["block_length"], cfg["beta"]
    # positions a draw reads: a stepwise draw the tokens one step commits (the most any step of a block does)
    read = G
    if cfg["estimator"] == "stepwise":
        read = max(transfer_schedule(block, cfg["sampling_steps"] // (G // block)))
    passes = cfg["gradient_accumulation_steps"] * cfg["mc_samples"]  # one draw a forward and backward
    rollout = rollout_working_set(shape, rows, positions, block)
    where = "--prompt_length" if args.prompt_length else "the preset's max_prompt_length"
    out(
        f"# LLaDA-8B shape, {args.n_layers} layers: {P / 1e9:.3f} B parameters; LoRA r {lora_r} on {n_adapted} layers "
        f"({', '.join(targets)}): {A / 1e6:.1f} M; {args.gpus} GPUs of {args.gpu_memory_gib:g} GiB"
    )
    out(
        f"# update forward: {rows} rows x ({prompt} prompt, {where}, + {G} completion) tokens, the head on {read} "
        f"positions a row; {passes} forward-backward passes a step ({cfg['gradient_accumulation_steps']} micro-batches "
        f"x {cfg['mc_samples']} draws) x num_iterations {cfg['num_iterations']}; rollout: {rows} rows, blocks of "
        f"{block}; beta {beta}"
    )
    for lora, name in ((lora_r, f"LoRA r {lora_r}"), (0, "full")):
        one = layer_saved(shape, rows, positions, lora, adapted if lora else {}) / (rows * positions)
        out(
            f"# kept for backward per token and layer, {name}: {one / 1024:.1f} KiB (layer_saved; "
            "LLaDA's float32 norm copies in)"
        )
    head = f"fits {args.gpu_memory_gib:g} GiB (ckpt)"
    columns = (
        "weights | grads | AdamW | reference | rollout peak | update peak, no ckpt | update peak, ckpt | step peak | "
        "sent per step"
    )
    out(f"| setup | {columns} | {head} |")
    out("|---|---|---|---|---|---|---|---|---|---|---|")
    model = {}
    R = 2 * shape["vocab_size"] * shape["d_model"] + shape["d_model"]  # the root: embeddings, final norm, head
    for name, weights, grads, optim, ref, gather, extra in rows_of_table(shape, P, A, args.gpus, beta):
        lora = lora_r if "LoRA" in name else 0
        resident = weights + grads + optim + ref
        # the update's gradients exist only while it runs; the rollout keeps weights and optimizer state
        at_rollout = weights + optim + ref + gather + rollout
        kept = [
            activations(shape, rows, positions, read, lora, adapted if lora else {}, head_r if lora else 0,
                        cfg["top_k"], ckpt)
            for ckpt in (False, True)
        ]  # fmt: skip
        peaks = [resident + extra + k + backward_working_set(shape, rows, positions) for k in kept]
        at_step = resident + STEP_TEMPORARIES  # fused AdamW: in place
        sent = collective_bytes(name, P, A, R, args.gpus, passes, cfg["num_iterations"], beta) if args.gpus > 1 else 0
        model[name] = dict(rollout=at_rollout, update=peaks, step=at_step)
        fits = "yes" if max(at_rollout, peaks[1], at_step) <= args.gpu_memory_gib * GIB else "no"
        fits += " (bf16 weights: AdamW steps below their rounding are lost)" if name == "DDP, full" else ""
        cells = [weights, grads, optim, ref, at_rollout, *peaks, at_step, sent]
        out(f"| {name} | " + " | ".join(f"{c / GIB:.1f}" for c in cells) + f" | {fits} |")
    out(
        "(GiB per GPU; the CUDA context, workspace and the allocator's fragmentation, about 1-3 GiB, not counted; "
        "reference: the frozen copy at beta > 0; sent per step: GiB each rank sends, collective_bytes)"
    )
    if beta == 0:
        out(
            f"# at beta > 0: DDP, full +{2 * P / GIB:.1f} GiB resident; FSDP, full +{4 * P / args.gpus / GIB:.1f} GiB "
            f"resident and +{2 * P / GIB:.1f} GiB while the rollouts run (the reference gathered in bf16), and "
            f"{(args.gpus - 1) / args.gpus * 2 * P / GIB:.1f} GiB more sent a step; LoRA: nothing (its base is the "
            "reference)"
        )
    if args.measure_cpu:
        measure_on_cpu(shape, cfg, rows, positions, prompt, read, cfg["lora_r"], targets, out)
    if args.measure:  # under torchrun on CUDA: the FSDP rows of this table against what CUDA allocates
        import torch.distributed as dist

        dist.init_process_group("nccl")
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        predicted = model["FSDP, full"]
        for ckpt in (False, True):
            peaks = measured_fsdp_full(shape, cfg, rows, positions, prompt, read, block, ckpt)
            print(
                f"measured FSDP, full, {dist.get_world_size()} GPUs, checkpointing {ckpt}: update peak "
                f"{peaks['update'] / GIB:.1f} GiB (model {predicted['update'][ckpt] / GIB:.1f}), rollout peak "
                f"{peaks['rollout'] / GIB:.1f} GiB (model {predicted['rollout'] / GIB:.1f}); "
                f"torch.cuda.max_memory_allocated on rank {dist.get_rank()}, {torch.cuda.get_device_name()}"
            )
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
