"""What block-causal attention buys (blocks.py), measured on one model side by side: the rollout with
and without the KV cache of finished blocks, and the AGRPO update (forward + backward of
agrpo.accumulate_gradients) with the exact stepwise sum in one packed forward, k sampled steps
packed, the same k steps one forward each, and the exact sum recomputing every step in full; then, on
the shipped block base (models/tiny-countdown-block), greedy decoding one token a step against threshold
decoding, both over the cache: accuracy on held-out problems and positions per completion.

    python bench/bench_blocks.py                                 # CPU, the embedded block model
    python bench/bench_blocks.py --model_shape=llada8b           # LLaDA-8B's shape, block-causal, bf16

The default shape is the one the block comparison is stated for: 384 completion tokens in blocks of
12, 128 steps (4 a block), a 128-token prompt. Token positions are counted by a hook on the model's
forward (every position any forward runs); "full passes" divides them by one pass over the batch.
Peak memory: torch.cuda.max_memory_allocated on CUDA; on CPU the process's resident memory above
its level before the call, sampled every millisecond (an approximation, said so in the table).
"""

import ctypes
import dataclasses
import os
import sys
import threading
import time
from types import SimpleNamespace

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import amp, bench_model, environment, random_tokens, sync  # noqa: E402

from agrpo import MicroBatch, accumulate_gradients  # noqa: E402
from likelihood import stepwise_draws  # noqa: E402
from plumbing.configurator import configure  # noqa: E402
from plumbing.logits import count_positions  # noqa: E402
from plumbing.model import add_lora, set_gradient_checkpointing  # noqa: E402
from sample import generate  # noqa: E402

# --- config
model_shape = "tiny"  # tiny: the embedded block model (random, peaked) | llada8b: LLaDA-8B's shape, block-causal, bf16
device = ""  # cuda | cpu ("" = cuda when there is one)
per_device_train_batch_size = 4  # sequences of the rollout and of the update
prompt_length = 128  # prompt tokens (random ids)
max_completion_length = 384  # G: completion tokens
block_length = 12  # the model's block size, the sampler's blocks
sampling_steps = 128  # m: unmasking steps
mc_samples = (2, 24)  # k of the sampled-step rows
lora_r = 0  # LoRA rank of the update (0: every weight trained)
gradient_checkpointing = False  # recompute each block's activations in the backward pass
recompute_in_full = True  # time the exact sum by m full forwards too (the slowest row)
repeats = 2  # timed calls (after one warm-up)
base_items = 200  # held-out Countdown problems the shipped block base decodes (threshold rows; 203 exist)
taus = (0.9, 0.8, 0.7, 0.5)  # thresholds of those rows
quick = False  # tiny sizes: checks the script runs
# --- end of config

args = SimpleNamespace(**configure(__file__))
args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
if args.quick:
    args.per_device_train_batch_size, args.prompt_length, args.max_completion_length = 2, 16, 48
    args.sampling_steps, args.mc_samples, args.repeats, args.base_items = 16, (2,), 1, 20
cuda = args.device.startswith("cuda")
B, P, G, size, m = (
    args.per_device_train_batch_size,
    args.prompt_length,
    args.max_completion_length,
    args.block_length,
    args.sampling_steps,
)

model, mask_id, _, vocab = bench_model(args.model_shape, args.device, block_size=size)
positions = count_positions(model)


def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(fn):
    """(result, seconds per call, token positions per call, peak memory in MiB) of fn, repeated."""
    fn()  # warm-up
    sync(args.device)
    positions[0], peak, stop = 0, [0], threading.Event()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand memory freed by earlier cases back, so growth shows again
        base = rss()

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], rss() - base)
                time.sleep(0.001)

        watcher = threading.Thread(target=sample, daemon=True)
        watcher.start()
    t0 = time.perf_counter()
    for _ in range(args.repeats):
        out = fn()
    sync(args.device)
    seconds = (time.perf_counter() - t0) / args.repeats
    stop.set()
    memory = (torch.cuda.max_memory_allocated() - base) if cuda else peak[0]
    return out, seconds, positions[0] // args.repeats, memory / 2**20


prompts = random_tokens((B, P), vocab, mask_id, torch.Generator().manual_seed(0)).to(args.device)
kw = dict(max_completion_length=G, block_length=size, sampling_steps=m, mask_id=mask_id, temperature=0.9)
rollouts = {}
for cached in (True, False):
    rollouts[cached] = measure(
        lambda cached=cached: generate(
            model, prompts, generator=torch.Generator().manual_seed(1), kv_cache=cached, **kw
        )
    )
same = torch.equal(rollouts[True][0].ids, rollouts[False][0].ids)
rollout = rollouts[True][0]
full_pass = B * (P + G)

n_params = sum(p.numel() for p in model.parameters())
print(f"# bench_blocks: {args.model_shape} ({n_params / 1e6:.1f}M params), {environment(args.device)}")
print(f"# batch {B} x ({P} + {G}), blocks of {size}, {m} steps ({m // (G // size)} a block)", end="")
print(f"; one full pass = {full_pass} positions")
memory_note = "CUDA max allocated above the start" if cuda else "CPU resident memory above the start, sampled each ms"
print(f"\n| rollout (seeded, T = 0.9) | seconds | token positions | full passes | peak memory MiB ({memory_note}) |")
print("|---|---:|---:|---:|---:|")
for cached, name in ((True, "KV cache of finished blocks"), (False, "every step over the whole sequence")):
    _, s, n, mem = rollouts[cached]
    print(f"| {name} | {s:.3f} | {n} | {n / full_pass:.1f} | {mem:.1f} |")
ratio = rollouts[False][2] / rollouts[True][2]
speed = rollouts[False][1] / rollouts[True][1]
print(f"cached rollout: {ratio:.1f}x fewer token positions, {speed:.1f}x faster; identical tokens: {same}")

if args.lora_r:
    model = add_lora(model, args.lora_r, args.lora_r, under_autocast=cuda)
if args.gradient_checkpointing:
    set_gradient_checkpointing(model)
model.train()
advantages = torch.randn(B, generator=torch.Generator().manual_seed(1)).to(args.device)
rows = torch.arange(B, device=args.device)


def update(draws):
    with amp(args.device):
        old = [rollout.logp[None].expand(draws.x.shape[0], -1, -1)]
        batch = MicroBatch(rollout, [], None, None, None, advantages, rows, [draws], old, None)
        accumulate_gradients(model, [batch], 0, epsilon=0.2, epsilon_high=0.2, beta=0.0)
    for p in model.parameters():
        p.grad = None


cases = [("exact sum, one packed forward", stepwise_draws(rollout, 0, "exact"))]
for k in args.mc_samples:
    draws = stepwise_draws(rollout, k, "low_discrepancy", torch.Generator().manual_seed(2))
    cases += [(f"k={k} sampled steps, packed", draws), (f"k={k} sampled steps, one forward each", draws)]
if args.recompute_in_full:
    cases.append(("exact sum, every step recomputed in full", stepwise_draws(rollout, 0, "exact")))
print(
    f"\n| update: forward + backward, lora_r={args.lora_r}, checkpointing={args.gradient_checkpointing} "
    f"| seconds | token positions | full passes | peak memory MiB |"
)
print("|---|---:|---:|---:|---:|")
results = {}
for name, draws in cases:
    if "each" in name or "in full" in name:
        draws = dataclasses.replace(draws, blockwise=False)  # then each draw is its own forward
    _, s, n, mem = measure(lambda draws=draws: update(draws))
    results[name] = n
    print(f"| {name} | {s:.3f} | {n} | {n / full_pass:.2f} | {mem:.1f} |")
exact = results["exact sum, one packed forward"]
spb = m // (G // size)
print(f"exact sum: {exact / full_pass:.2f} full passes (bound 1 + steps a block = {1 + spb})", end="")
if "k=24 sampled steps, one forward each" in results:
    print(f"; {results['k=24 sampled steps, one forward each'] / exact:.1f}x fewer positions than 24 full passes")
else:
    print()

# --- threshold decoding over the cache, on the shipped block base: positions per completion at greedy accuracy
from eval import evaluate  # noqa: E402
from plumbing import data  # noqa: E402
from plumbing.model import load  # noqa: E402

base, tok = load("models/tiny-countdown-block", device=args.device)
counter = count_positions(base)
from plumbing.configurator import declared  # noqa: E402

options = {k: default for k, (default, *_) in declared(data.task_file("countdown")).items()}  # as tools/sft.py trains
test_items = data.test_set("countdown", "", args.base_items, 0, **options)
L8 = 16  # the base's completion length (tools/sft.py), in its blocks of 8
print(
    f"\n# models/tiny-countdown-block, {len(test_items)} held-out Countdown problems (seed 0), greedy, "
    f"{L8} tokens in blocks of 8, KV cache of finished blocks"
)
print("| decoding | accuracy | forward passes per completion | token positions per completion |")
print("|---|---:|---:|---:|")
rows = [("one token a step (16 steps)", dict(sampling_steps=L8))]
rows += [(f"threshold τ = {tau}", dict(sampling_steps=L8, unmasking="threshold", threshold=tau)) for tau in args.taus]
measured = {}
for name, how in rows:
    counter[0] = 0
    records = evaluate(
        base, tok, "countdown", test_items, max_completion_length=L8, block_length=8, compact=True, **how
    )
    n = len(records)
    accuracy = sum(r["accuracy"] for r in records) / n
    measured[name] = counter[0] / n
    print(f"| {name} | {accuracy:.3f} | {sum(r['passes'] for r in records) / n:.2f} | {measured[name]:.1f} |")
for name in list(measured)[1:]:
    print(f"{name}: {measured[rows[0][0]] / measured[name]:.2f}x fewer positions than one token a step")
