"""Bias and spread of each log-likelihood estimator against the exact stepwise sum Σ_t f(t).

For each estimator and k (forward passes per sequence) it draws N independent estimates of
log π(o) for every row of one rollout, and of the gradient's projection on a fixed random
direction v, then prints mean bias (± its standard error) and standard deviation of both, and
the wall time of one value estimate (forward passes only, no grad).

    python bench/bench_estimators.py [--draws=100] [--model_name_or_path=DIR] [--quick]
"""

import os
import sys
import time
from types import SimpleNamespace

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from likelihood import ESTIMATORS, SCHEMES, exact_logp, make_draws, sequence_logp, stepwise_draws  # noqa: E402
from plumbing.configurator import configure  # noqa: E402
from plumbing.data import chat_ids  # noqa: E402
from plumbing.model import load  # noqa: E402
from sample import generate  # noqa: E402

# --- config
model_name_or_path = "tiny"  # "tiny" (the embedded model at a random init with peaked outputs) or a model folder
draws = 100  # independent estimates per estimator and k
mc_samples = (1, 4, 16)  # k: forward passes per estimate
per_device_train_batch_size = 4  # completions of the one rollout
max_completion_length = 32  # G: completion tokens
sampling_steps = 32  # m: unmasking steps of the rollout
quick = False  # a few draws, k = 1 only: checks the script runs
# --- end of config

args = SimpleNamespace(**configure(__file__))
if args.quick:
    args.draws, args.mc_samples, args.per_device_train_batch_size, args.max_completion_length, args.sampling_steps = (
        4,
        (1,),
        2,
        16,
        16,
    )
torch.set_num_threads(max(1, os.cpu_count() or 1))

overrides = dict(init_std=0.3) if args.model_name_or_path == "tiny" else None  # peaked distributions at random init
model, tok = load(args.model_name_or_path, tiny_overrides=overrides)
model.eval()
prompt = chat_ids(tok, [{"role": "user", "content": "Using the numbers [3, 5, 7], make 22."}])
r = generate(
    model,
    [prompt] * args.per_device_train_batch_size,
    max_completion_length=args.max_completion_length,
    block_length=min(8, args.max_completion_length),
    sampling_steps=args.sampling_steps,
    mask_id=tok.mask_token_id,
    eos_ids=tok.eos_ids,
    temperature=0.9,
    unmasking="random",
    generator=torch.Generator().manual_seed(0),
)
params = list(model.parameters())
v = [torch.randn(p.shape, generator=torch.Generator().manual_seed(i)) for i, p in enumerate(params)]


def grad_proj(draws):
    grads = torch.autograd.grad(sequence_logp(model, r, draws).sum(), params)
    return sum((g * vi).sum() for g, vi in zip(grads, v)).item()


with torch.no_grad():
    exact = exact_logp(model, r)
exact_grad = grad_proj(stepwise_draws(r, 0, "exact"))
shape = f"{args.per_device_train_batch_size} rows, G={args.max_completion_length}, m={args.sampling_steps} steps"
print(f"rollout: {shape}; exact log π per row {[round(x, 2) for x in exact.tolist()]}")
print(
    f"exact gradient projection (Σ rows): {exact_grad:.3f}; {args.draws} draws per cell; value columns per row "
    "(averaged over rows)\n"
)
header = ["estimator".ljust(26), "  k", " value bias ± se", "value std", "  grad bias ± se", " grad std", " ms/est"]
print("| " + " | ".join(header) + " |")
print(f"|{'-' * 28}|{'-' * 5}|{'-' * 18}|{'-' * 11}|{'-' * 18}|{'-' * 11}|{'-' * 9}|")
# every sampled scheme of the stepwise estimator, then the ablations (likelihood's own lists)
variants = [("stepwise", s) for s in SCHEMES if s != "exact"] + [(e, None) for e in ESTIMATORS if e != "stepwise"]
for k in args.mc_samples:
    for est, scheme in variants:
        g = torch.Generator().manual_seed(1)
        vals, grads, t0 = [], [], time.perf_counter()
        for _ in range(args.draws):
            d = make_draws(est, r, k, g, scheme=scheme or "uniform")
            if est != "stepwise":
                d.weight = d.weight / k  # k draws averaged into one estimate of log π
            with torch.no_grad():
                vals.append(sequence_logp(model, r, d))
        t_val = (time.perf_counter() - t0) / args.draws
        for _ in range(args.draws):
            d = make_draws(est, r, k, g, scheme=scheme or "uniform")
            if est != "stepwise":
                d.weight = d.weight / k
            grads.append(grad_proj(d))
        vals, grads = torch.stack(vals), torch.tensor(grads)
        bias = (vals.mean(0) - exact).mean().item()
        bias_se = (vals.std(0).pow(2).mean() / len(vals)).sqrt().item()
        gb, gse = grads.mean().item() - exact_grad, grads.std().item() / len(grads) ** 0.5
        name = est + (f" ({scheme})" if scheme else "")
        print(
            f"| {name:<26} | {k:>3} | {bias:>7.2f} ± {bias_se:<6.2f} | {vals.std(0).mean().item():>9.2f} "
            f"| {gb:>7.1f} ± {gse:<6.1f} | {grads.std().item():>9.1f} | {1000 * t_val:>7.1f} |"
        )
