"""The optimizer as the released run configures it (AdamW, transformers' cosine schedule with warmup,
the step count of an epoch-based run), the clipped step, and the check that the weights stay finite."""

import math

import torch
from transformers import get_cosine_schedule_with_warmup

from plumbing.ddp import least_over_ranks
from plumbing.fsdp import local

WARMUP_RATIO = 0.01  # the release's warmup_ratio
# A clipped gradient below half of sqrt(float32's largest) keeps AdamW's g² and its moments finite (float32
# and bfloat16 share the range); then, with the rate at most 1, a step moves a weight by at most ~2.35x the
# rate (β = (0.9, 0.99); tested), so a finite weight stays finite and no step needs checking before it is taken.
SAFE_GRAD_NORM = math.sqrt(torch.finfo(torch.float32).max) / 2


def make_optimizer(learning_rate, params, total_steps):
    """AdamW as the released run configures it: torch's fused AdamW, β = (0.9, 0.99), weight decay 0.01, and
    transformers' get_cosine_schedule_with_warmup with num_warmup_steps = ceil(0.01 · total_steps), as transformers'
    TrainingArguments counts them: the rate 0 at the first step, rising linearly to the peak at the end of
    warmup, then a cosine to 0 at total_steps. Float16 weights are refused: AdamW's moments do not fit
    float16's range (a gradient of 1e-3 leaves a second moment of 0, and unfused AdamW an infinite weight)."""
    if any(p.dtype == torch.float16 for p in params):
        raise ValueError(
            "the model's trained weights are float16, where AdamW's steps can make a weight infinite: "
            "save the model in bfloat16 or float32, or train LoRA adapters (float32)"
        )
    # fused: transformers' default optimizer under torch >= 2.8 ("adamw_torch_fused"), and no tensor-sized temporary
    opt = torch.optim.AdamW(params, lr=learning_rate, betas=(0.9, 0.99), weight_decay=0.01, fused=True)
    return opt, get_cosine_schedule_with_warmup(opt, math.ceil(WARMUP_RATIO * total_steps), total_steps)


def steps_for_epochs(epochs, items, prompts_per_micro_batch, accumulation):
    """Optimizer steps of `epochs` passes over `items` prompts, counted as the released run (TRL's sampler
    under transformers' Trainer) counts them: a pass is the whole micro-batches of prompts_per_micro_batch
    prompts (all ranks together; the rest of the prompts dropped), one step every `accumulation` of them
    (a last, shorter one counts), and epochs × the steps of a pass rounded up."""
    micro_batches = items // prompts_per_micro_batch
    per_epoch = max(micro_batches // accumulation + int(micro_batches % accumulation > 0), 1)
    return math.ceil(epochs * per_epoch)


def clipped_step(opt, max_grad_norm):
    """The gradient-norm clip and one AdamW step, skipped (weights and moments untouched) when the
    gradient is not finite or, clipped, not below SAFE_GRAD_NORM. Returns (grad norm, whether the step
    was taken). Nothing is computed aside: the step costs what torch's AdamW step costs, and one read of
    the host (the norm with the ranks' verdict, agreed on the device)."""
    params = [p for group in opt.param_groups for p in group["params"]]
    grad_norm = local(torch.nn.utils.clip_grad_norm_(params, max_grad_norm)).double()  # over all ranks' gradients
    safe = torch.isfinite(grad_norm) & (grad_norm.clamp(max=max_grad_norm) < SAFE_GRAD_NORM)
    norm, took = torch.stack([grad_norm, least_over_ranks(safe.double())]).tolist()
    if took:
        opt.step()
    opt.zero_grad(set_to_none=True)
    return norm, bool(took)


@torch.no_grad()
def finite_weights(params):
    """1 where every weight is finite on every rank, else 0, as a tensor left on the device (a step reads it with
    its metrics): one reduction per tensor (its largest |w|, NaN for a NaN), no tensor-sized temporary."""
    largest = [torch.linalg.vector_norm(local(p), float("inf")).float() for p in params]
    if not largest:
        return torch.ones((), dtype=torch.float64)
    return least_over_ranks(torch.isfinite(torch.stack(largest)).all().double())
