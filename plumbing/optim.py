"""The optimizer as the released run configures it (AdamW, warmup, cosine decay), and the guard
that never takes a step that would leave a weight non-finite."""

import math

import torch

from plumbing.ddp import every_rank
from plumbing.fsdp import local


def make_optimizer(learning_rate, params, total_steps):
    """AdamW as the released run configures it: β = (0.9, 0.99), weight decay 0.01, the rate warming up
    linearly over the first 1% of the steps, then decaying to 0 (cosine)."""
    opt = torch.optim.AdamW(params, lr=learning_rate, betas=(0.9, 0.99), weight_decay=0.01)
    warmup = max(1, int(0.01 * total_steps))
    return opt, torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total_steps)))
    )


def clipped_step(opt, max_grad_norm):
    """The gradient-norm clip and one AdamW step, skipped when the gradient or the step it would take
    is not finite (weights and moments untouched). Returns (grad norm, whether the step was taken)."""
    params = [p for group in opt.param_groups for p in group["params"]]
    grad_norm = local(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))  # over all ranks' gradients
    # FSDP: each rank checks its own part of the weights, so all must agree before any steps
    took = every_rank(torch.isfinite(grad_norm) and adamw_keeps_finite(opt))
    if took:
        opt.step()
    opt.zero_grad(set_to_none=True)
    return float(grad_norm), took


@torch.no_grad()
def adamw_keeps_finite(opt):
    """Whether AdamW's next step leaves every weight finite: its update computed aside, one parameter
    at a time (no copy of the model), so a step that would break the weights is never taken."""
    for group in opt.param_groups:
        (b1, b2), lr, eps = group["betas"], group["lr"], group["eps"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state, g = opt.state.get(p, {}), local(p.grad).float()
            t = float(local(state.get("step", 0))) + 1
            m = (1 - b1) * g + (b1 * local(state["exp_avg"]) if state else 0)
            v = (1 - b2) * g * g + (b2 * local(state["exp_avg_sq"]) if state else 0)
            decayed = local(p).float() * (1 - lr * group["weight_decay"])
            new = decayed - lr / (1 - b1**t) * m / ((v / (1 - b2**t)).sqrt() + eps)
            if not bool(torch.isfinite(new).all()):
                return False
    return True
