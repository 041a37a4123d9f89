"""Time, peak memory and MFU of one AGRPO update: k stepwise draws per sequence, each one
forward + backward (agrpo.accumulate_gradients), on a synthetic rollout of the given shape.

    python bench/bench_train.py --quick                                   # CPU, embedded model (a test)
    python bench/bench_train.py --model_shape=llada8b --lora_r=64 --gradient_checkpointing

On CUDA it runs under bf16 autocast with LoRA adapters in float32, as train.py does.

FLOPs counted per draw: forward F = 2·N·tokens (+ attention; the vocabulary head only on the
positions the draw reads, as forward_logits computes it); backward 2F with full fine-tuning
(activation and weight gradients), F with LoRA (activation gradients only; the adapters' own
FLOPs are negligible); recompute F under gradient checkpointing. MFU = (forward + backward) /
time / peak, the matmul peak measured on this machine; "HFU" also counts the recompute.
"""

import os
import resource
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    amp,
    bench_model,
    environment,
    forward_flops,
    measured_peak_flops,
    print_profile,
    random_tokens,
    shape_config,
    sync,
)

from agrpo import MicroBatch, accumulate_gradients, prepare  # noqa: E402
from likelihood import make_draws  # noqa: E402
from plumbing.model import add_lora, compile_layers, set_gradient_checkpointing  # noqa: E402
from sample import Rollout, transfer_schedule  # noqa: E402

# --- config
mc_samples = 4  # k: stepwise draws per sequence
lora_r = 0  # LoRA rank (0 = full fine-tuning); α = r
gradient_checkpointing = False  # recompute activations in the backward pass
peft_input_cast = False  # keep peft's float32 copy of each adapter input (its default; train.py skips it)
# --- end of config

args = shape_config(__file__)  # and the rollout shape of bench/common.py
if args.quick:
    args.mc_samples = 2


def synthetic_rollout(B, P, G, block_length, steps, mask_id, vocab, device):
    """Random tokens, each block's positions committed in a random order by the real schedule."""
    g = torch.Generator().manual_seed(0)
    ids = random_tokens((B, P + G), vocab, mask_id, g)
    spb = steps // (G // block_length)
    per_block = torch.repeat_interleave(torch.arange(spb), torch.tensor(transfer_schedule(block_length, spb)))
    unmask = torch.stack(
        [
            torch.cat(
                [b * spb + per_block[torch.randperm(block_length, generator=g)] for b in range(G // block_length)]
            )
            for _ in range(B)
        ]
    )
    logp = -torch.rand(B, G, generator=g)
    return Rollout(
        ids.to(device),
        torch.ones(B, P + G, dtype=torch.long, device=device),
        P,
        unmask.to(device),
        logp.to(device),
        torch.rand(B, G, generator=g).to(device),
        steps,
        mask_id,
        (-1,),
    )


model, mask_id, eos_id, vocab = bench_model(args.model_shape, args.device)
n_params = sum(p.numel() for p in model.parameters())
B, P, G = args.per_device_train_batch_size, args.prompt_length, args.max_completion_length
rollout = synthetic_rollout(B, P, G, args.block_length, args.sampling_steps, mask_id, vocab, args.device)
read = int(make_draws("stepwise", rollout, args.mc_samples, torch.Generator().manual_seed(2)).read.sum())
fwd = forward_flops(model, B, P + G, head_tokens=read / args.mc_samples)  # per draw
if args.lora_r:
    model = add_lora(
        model, args.lora_r, args.lora_r, under_autocast=args.device.startswith("cuda") and not args.peft_input_cast
    )
if args.gradient_checkpointing:
    set_gradient_checkpointing(model)
if args.compile:
    compile_layers(model)
model.train()
advantages = torch.randn(args.per_device_train_batch_size, generator=torch.Generator().manual_seed(1)).to(args.device)


def update():
    with amp(args.device):
        draws, old, _ = prepare(
            model, rollout, estimator="stepwise", k=args.mc_samples, mu=1, generator=torch.Generator().manual_seed(2)
        )
        rows = torch.arange(args.per_device_train_batch_size, device=args.device)
        batch = MicroBatch(rollout, [], None, None, None, advantages, rows, draws, old, None)
        accumulate_gradients(model, [batch], 0, epsilon=0.2, epsilon_high=0.2, beta=0.0)
    for p in model.parameters():
        p.grad = None


update()  # warm-up
sync(args.device)
if args.device.startswith("cuda"):
    torch.cuda.reset_peak_memory_stats()
t0 = time.perf_counter()
for _ in range(args.repeats):
    update()
sync(args.device)
t = (time.perf_counter() - t0) / args.repeats
if args.device.startswith("cuda"):
    memory = f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB (torch.cuda.max_memory_allocated)"
else:
    memory = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (process peak RSS)"

dtype = next(model.parameters()).dtype
peak = measured_peak_flops(args.device, dtype)
model_flops = args.mc_samples * fwd * (2 if args.lora_r else 3)
hardware_flops = model_flops + (args.mc_samples * fwd if args.gradient_checkpointing else 0)
trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
sizes = f"{n_params / 1e6:.1f}M params, {trained / 1e6:.2f}M trained, {dtype}"
print(f"# bench_train: {args.model_shape} ({sizes}), {environment(args.device)}")
print(
    f"# batch {B} x ({P} + {G}), k={args.mc_samples} draws, lora_r={args.lora_r}, "
    f"gradient_checkpointing={args.gradient_checkpointing}, compile={args.compile}, "
    f"peft_input_cast={args.peft_input_cast}"
)
print(
    f"# matmul peak measured here: {peak / 1e12:.2f} TFLOP/s; FLOP floor of the update at that peak: "
    f"{model_flops / peak:.3f} s"
)
print("| update | seconds | s per sequence | model TFLOP | MFU % | HFU % | peak memory |")
print("|---|---:|---:|---:|---:|---:|---|")
print(
    f"| k={args.mc_samples} fwd+bwd | {t:.3f} | {t / B:.4f} | {model_flops / 1e12:.2f} | "
    f"{100 * model_flops / t / peak:.1f} | {100 * hardware_flops / t / peak:.1f} | {memory} |"
)
if args.profile:
    print_profile(update, args.device)
