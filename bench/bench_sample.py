"""Rollout throughput: sample.generate against a plain reference loop written here.

The reference does LLaDA's sampler the obvious way: every step one full forward pass over the
whole sequence, a float64 softmax over the full vocabulary at every position, confidence of the
argmax, the k most confident masked positions of the current block committed. No EOS stopping,
no row dropping. At temperature 0 both must produce the same tokens (checked, printed).

    python bench/bench_sample.py --quick                      # CPU, embedded model (used by a test)
    python bench/bench_sample.py --model_shape=llada8b     # random LLaDA-8B-shaped model, bf16

Prints completion tokens/s and forward passes/s of both, their ratio, and the FLOP rate against a
matmul peak measured on the same machine. FLOPs counted are the ones the algorithm needs (every
position through the layers, the vocabulary head on the current block only), the same count for
both samplers: work the reference does beyond that is its inefficiency, not credited.

Threshold decoding (`thresholds`) gets rows too: its forward passes per row and speed on the same
prompts (on a random model confidences are low, so this is its slowest case). With the embedded
model a second table compares it with fixed-step decoding where confidences mean something: the
shipped base model (models/tiny-countdown) on the Countdown test set, forward passes, completion
positions decoded per second and accuracy, greedy.
"""

import os
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

from plumbing.model import compile_layers  # noqa: E402
from sample import generate, transfer_schedule  # noqa: E402

# --- config
thresholds = (0.5, 0.7, 0.9)  # τ of the threshold-decoding rows
eval_items = 200  # Countdown test problems of the accuracy table (model_shape tiny)
# --- end of config

args = shape_config(__file__)  # and the rollout shape of bench/common.py


@torch.no_grad()
def reference_generate(model, prompt, max_completion_length, block_length, sampling_steps, mask_id):
    """The sampler written plainly (temperature 0, low-confidence unmasking)."""
    gen_length, steps = max_completion_length, sampling_steps
    B, P = prompt.shape
    x = torch.cat([prompt, torch.full((B, gen_length), mask_id, device=prompt.device)], 1)
    n_blocks = gen_length // block_length
    per_block = transfer_schedule(block_length, steps // n_blocks)
    for b in range(n_blocks):
        for k in per_block:
            logits = model(x).logits.double()
            logits[..., mask_id] = float("-inf")
            p = torch.softmax(logits, -1)
            conf, x0 = p.max(-1)
            in_block = torch.zeros_like(x, dtype=torch.bool)
            in_block[:, P + b * block_length : P + (b + 1) * block_length] = True
            conf = torch.where(
                in_block & (x == mask_id), conf, torch.tensor(-1.0, dtype=conf.dtype, device=conf.device)
            )
            idx = conf.topk(k, dim=-1).indices
            x.scatter_(1, idx, x0.gather(1, idx))
    return x


def timed(fn, repeats, device):
    """The median of `repeats` timed calls after a warm-up: on a shared 2-core machine single runs
    vary by ±20%."""
    with amp(device):  # train.py's precision
        fn()  # warm-up (allocator, kernels, compilation)
        times = []
        for _ in range(repeats):
            sync(device)
            t0 = time.perf_counter()
            out = fn()
            sync(device)
            times.append(time.perf_counter() - t0)
    return out, sorted(times)[len(times) // 2]


model, mask_id, eos_id, vocab = bench_model(args.model_shape, args.device)
if args.compile:
    compile_layers(model)  # both samplers run the compiled blocks
dtype = next(model.parameters()).dtype
g = torch.Generator().manual_seed(0)
prompt = random_tokens((args.per_device_train_batch_size, args.prompt_length), vocab, mask_id, g).to(args.device)
setting = dict(
    max_completion_length=args.max_completion_length,
    block_length=args.block_length,
    sampling_steps=args.sampling_steps,
    mask_id=mask_id,
)

ref_x, t_ref = timed(lambda: reference_generate(model, prompt, **setting), args.repeats, args.device)
ours, t_ours = timed(lambda: generate(model, prompt, **setting, eos_ids=()), args.repeats, args.device)
same = torch.equal(ref_x, ours.ids)
stop, t_stop = timed(lambda: generate(model, prompt, **setting, eos_ids=(eos_id,)), args.repeats, args.device)
by_threshold = {}
for tau in args.thresholds:
    fast = dict(
        setting, sampling_steps=args.max_completion_length, unmasking="threshold", threshold=tau
    )  # m = G: at least one position a step
    by_threshold[tau] = timed(
        lambda fast=fast: generate(model, prompt, **fast, eos_ids=(eos_id,)), args.repeats, args.device
    )

L = args.prompt_length + args.max_completion_length
# the work the algorithm needs: every step a forward over all L positions, logits of the current block
B = args.per_device_train_batch_size
flops = args.sampling_steps * forward_flops(model, B, L, head_tokens=B * args.block_length)
peak = measured_peak_flops(args.device, dtype)
tokens = args.per_device_train_batch_size * args.max_completion_length
n_params = sum(p.numel() for p in model.parameters())
print(f"# bench_sample: {args.model_shape} ({n_params / 1e6:.1f}M params, {dtype}), {environment(args.device)}")
shape = f"batch {B} x ({args.prompt_length} prompt + {args.max_completion_length} completion)"
print(f"# {shape}, block {args.block_length}, {args.sampling_steps} steps, T=0, compile={args.compile}")
print(
    f"# matmul peak measured here: {peak / 1e12:.2f} TFLOP/s; FLOP floor of one rollout at that peak: "
    f"{flops / peak:.3f} s"
)
print("| sampler | seconds | completion tok/s | forward passes/s | TFLOP/s | % of matmul peak |")
print("|---|---:|---:|---:|---:|---:|")
for name, t in (("reference loop", t_ref), ("generate (no EOS stop)", t_ours), ("generate (default)", t_stop)):
    rates = f"{tokens / t:,.0f} | {args.sampling_steps / t:.1f} | {flops / t / 1e12:.2f} | {100 * flops / t / peak:.1f}"
    print(f"| {name} | {t:.3f} | {rates} |")
for tau, (r, t) in by_threshold.items():
    passes, batch_passes = r.passes.float().mean().item(), r.passes.max().item()
    print(
        f"| generate (threshold τ = {tau}), {passes:.1f} passes/row | {t:.3f} | {tokens / t:,.0f} | "
        f"{batch_passes / t:.1f} | | |"
    )
print(f"speed-up of generate over the reference: {t_ref / t_ours:.2f}x (default settings {t_ref / t_stop:.2f}x)")
print(
    f"rows that hit EOS (only these can stop early): {int(stop.is_eos.any(1).sum())} of "
    f"{args.per_device_train_batch_size}"
)
print(f"identical tokens at temperature 0: {'yes' if same else 'NO'}")
if args.profile:
    with amp(args.device):
        print_profile(lambda: generate(model, prompt, **setting, eos_ids=()), args.device)
if args.model_shape == "tiny" and args.thresholds:
    # where confidences mean something: the shipped base model on its task, fixed steps against τ
    from eval import evaluate  # noqa: E402
    from plumbing import data  # noqa: E402
    from plumbing.model import load  # noqa: E402

    base, tok = load("models/tiny-countdown", device=args.device)
    items = data.test_set(
        "countdown", "", 20 if args.quick else args.eval_items, 0, num_range=(1, 9), target_range=(1, 99)
    )
    G, block = 16, 8
    print(
        f"\n# models/tiny-countdown, Countdown test set ({len(items)} problems, train.py's for seed 0), G = {G}, "
        f"block {block}, greedy,"
    )
    print("# batch 100; tok/s counts all L completion positions decoded (EOS padding included)")
    print("| decoding | forward passes per row | seconds | completion tok/s | accuracy (%) ± SE |")
    print("|---|---:|---:|---:|---:|")
    from plumbing.stats import standard_error  # noqa: E402

    for m, tau in [(4, None), (8, None), (16, None), *((None, t) for t in args.thresholds)]:
        how = dict(unmasking="threshold", threshold=tau, sampling_steps=G) if tau else dict(sampling_steps=m)
        recs, t = timed(
            lambda how=how: evaluate(
                base,
                tok,
                "countdown",
                items,
                max_completion_length=G,
                block_length=block,
                batch_size=100,
                compact=True,
                **how,
            ),
            args.repeats,
            args.device,
        )
        acc = [r["accuracy"] for r in recs]
        passes = sum(r["passes"] for r in recs) / len(recs)
        label = f"threshold τ = {tau}" if tau else f"fixed, m = {m}"
        score = f"{100 * sum(acc) / len(acc):.1f} ± {100 * standard_error(acc):.1f}"
        print(f"| {label} | {passes:.2f} | {t:.2f} | {len(recs) * G / t:,.0f} | {score} |")
if not same:
    sys.exit("generate and the reference loop disagree at temperature 0")
