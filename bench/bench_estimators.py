"""Bias and spread of each log-likelihood estimator against the exact stepwise sum Σ_t f(t).

For each estimator and k (forward passes per sequence) it draws N independent estimates of
log π(o) for every row of one rollout, and of the gradient's projection on a fixed random
direction v, then prints mean bias (± its standard error) and standard deviation of both, and
the wall time of one value estimate (forward passes only, no grad).

    python bench/bench_estimators.py [--draws 100] [--checkpoint DIR] [--quick]
"""

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data import chat_ids  # noqa: E402
from likelihood import exact_logp, make_draws, sequence_logp, stepwise_draws  # noqa: E402
from model import load  # noqa: E402
from sample import generate  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--checkpoint", default="tiny", help="'tiny' (random init) or a trained tiny checkpoint dir")
ap.add_argument("--draws", type=int, default=100)
ap.add_argument("--ks", default="1,4,16")
ap.add_argument("--rows", type=int, default=4)
ap.add_argument("--gen_length", type=int, default=32)
ap.add_argument("--steps", type=int, default=32)
ap.add_argument("--quick", action="store_true", help="a few draws, k=1 only: checks the script runs")
args = ap.parse_args()
if args.quick:
    args.draws, args.ks, args.rows, args.gen_length, args.steps = 4, "1", 2, 16, 16
ks = [int(k) for k in args.ks.split(",")]
torch.set_num_threads(max(1, os.cpu_count() or 1))

overrides = dict(init_std=0.3) if args.checkpoint == "tiny" else None  # peaked distributions at random init
model, tok = load(args.checkpoint, tiny_overrides=overrides)
model.eval()
prompt = chat_ids(tok, [{"role": "user", "content": "Using the numbers [3, 5, 7], make 22."}])
r = generate(
    model,
    [prompt] * args.rows,
    gen_length=args.gen_length,
    block_length=min(8, args.gen_length),
    steps=args.steps,
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
print(f"rollout: {args.rows} rows, G={args.gen_length}, m={args.steps} steps; exact log π per row {[round(x, 2) for x in exact.tolist()]}")
print(f"exact gradient projection (Σ rows): {exact_grad:.3f}; {args.draws} draws per cell; value columns per row (averaged over rows)\n")
header = ["estimator".ljust(26), "  k", " value bias ± se", "value std", "  grad bias ± se", " grad std", " ms/est"]
print("| " + " | ".join(header) + " |")
print(f"|{'-' * 28}|{'-' * 5}|{'-' * 18}|{'-' * 11}|{'-' * 18}|{'-' * 11}|{'-' * 9}|")
variants = [("stepwise", "uniform"), ("stepwise", "low_discrepancy"), ("stepwise", "entropy"), ("elbo", None), ("one_step", None)]
for k in ks:
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
