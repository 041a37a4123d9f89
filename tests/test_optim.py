"""plumbing/optim.py: the released schedule and step count against transformers' own, what AdamW can
and cannot do to a finite weight, and the step's memory against torch's AdamW step alone."""

import math
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from plumbing.optim import (
    SAFE_GRAD_NORM,
    clipped_step,
    finite_weights,
    make_optimizer,
    steps_for_epochs,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BETAS, DECAY = (0.9, 0.99), 0.01


def rates(sched, opt, steps):
    """The rate each of `steps` optimizer steps runs at."""
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("total", [1, 2, 20, 99, 100, 101, 150, 2335])
def test_the_rate_at_every_step_is_the_released_runs(total):
    """The rate of every step equals what transformers' Trainer builds for lr_scheduler_type "cosine" with
    warmup_ratio 0.01 (TrainingArguments.get_warmup_steps, then get_scheduler): 0 at the first step."""
    from transformers import TrainingArguments, get_scheduler

    args = TrainingArguments(output_dir="unused", warmup_ratio=0.01, lr_scheduler_type="cosine", report_to=[])
    p = torch.nn.Parameter(torch.zeros(1))
    ours = rates(*reversed(make_optimizer(5e-6, [p], total)), total)
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=5e-6)
    sched = get_scheduler(args.lr_scheduler_type, opt, args.get_warmup_steps(total), total)
    assert ours == rates(sched, opt, total)
    warmup = math.ceil(0.01 * total)
    assert ours[0] == 0.0 and max(ours) <= 5e-6
    assert total == 1 or ours[warmup] == pytest.approx(5e-6)


def test_a_2335_step_run_warms_up_over_24_steps_from_zero():
    """The released GSM8K run's numbers: 24 warmup steps, rising by 1/24 of the peak a step."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt, sched = make_optimizer(1.0, [p], 2335)
    r = rates(sched, opt, 26)
    assert r[:25] == pytest.approx([s / 24 for s in range(25)]) and r[25] < 1.0


@pytest.mark.parametrize(
    "epochs, items, per_micro, accumulation",
    [
        (5, 7473, 8, 2),
        (1, 7473, 8, 2),
        (0.5, 100, 8, 3),
        (2.5, 1000, 16, 1),
        (3, 17, 4, 4),
        (1, 9, 8, 2),
        (7, 64, 8, 3),
    ],
)
def test_the_step_count_of_an_epoch_run_is_transformers(epochs, items, per_micro, accumulation):
    """Epoch-based step counts as transformers' Trainer computes them from the length of the dataloader
    the released run's sampler gives (the whole micro-batches of prompts a pass holds)."""
    from torch.utils.data import DataLoader
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(
        output_dir="unused", num_train_epochs=epochs, gradient_accumulation_steps=accumulation, report_to=[]
    )
    loader = DataLoader(list(range(items // per_micro)), batch_size=1)  # one micro-batch of all ranks an element
    trainer = SimpleNamespace(num_examples=lambda dl: len(dl.dataset), args=args)
    max_steps = Trainer.set_initial_training_values(trainer, args, loader, per_micro * accumulation)[-1]
    assert steps_for_epochs(epochs, items, per_micro, accumulation) == max_steps


def test_the_released_gsm8k_preset_takes_2335_steps():
    """GSM8K's 7,473 training prompts, 1 prompt per GPU on 8 GPUs, accumulation 2, 5 epochs: 2,335 steps
    (the released run's count; a count of 7,473 × 5 / 16 rounded up would be 2,336)."""
    assert steps_for_epochs(5.0, 7473, 1 * 8, 2) == 2335


def adamw(p, how):
    """AdamW at rate 1 as torch runs it: "fused" (what make_optimizer builds), "foreach", or "single" tensor."""
    kinds = dict(fused=dict(fused=True), foreach=dict(foreach=True), single=dict(foreach=False))
    return torch.optim.AdamW([p], lr=1.0, betas=BETAS, weight_decay=DECAY, **kinds[how])


def worst_case(steps, scale):
    """The gradients that make AdamW's step t as long as it can be: g_k ∝ (β1/β2)^(t−k) (Cauchy-Schwarz)."""
    return [scale * (BETAS[0] / BETAS[1]) ** (steps - k) for k in range(1, steps + 1)]


def test_an_adamw_step_moves_a_weight_by_at_most_2_35_times_the_rate():
    """|m̂| / sqrt(v̂) <= (1 − β1)/sqrt(1 − β2) · sqrt(β2 / (β2 − β1²)) = 2.3452 for β = (0.9, 0.99) (1 at
    the first step), beside the weight decay's lr · 0.01 · |w|; the worst-case gradients reach it."""
    bound = (1 - BETAS[0]) / math.sqrt(1 - BETAS[1]) * math.sqrt(BETAS[1] / (BETAS[1] - BETAS[0] ** 2))
    assert bound == pytest.approx(2.3452, abs=1e-4)
    p = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt, longest = adamw(p, "single"), 0.0
    for g in worst_case(2000, 1.0):
        before = p.detach().clone()
        p.grad = torch.tensor([g], dtype=torch.float64)
        opt.step()
        longest = max(longest, (p.detach() - before * (1 - DECAY)).abs().item())  # the step beside the decay
    assert 2.34 < longest <= bound


def gradient_sequences():
    """Finite gradients as long as SAFE_GRAD_NORM allows, and as short as float32 holds, in the shapes
    that stress AdamW: constant, alternating in sign, the worst case, tiny then large, large then tiny."""
    big, tiny = SAFE_GRAD_NORM * 0.999, 1e-45
    return {
        "big": [big] * 50,
        "alternating big": [big * (-1) ** t for t in range(50)],
        "worst case, big": worst_case(200, big),
        "tiny": [tiny] * 50,
        "alternating tiny": [tiny * (-1) ** t for t in range(50)],
        "tiny then big": [tiny] * 20 + [big, -big] * 10,
        "big then tiny": [big] * 20 + [tiny, -tiny] * 10,
        "zero then tiny": [0.0] * 5 + [tiny] * 5,
    }


@pytest.mark.parametrize("how", ["fused", "foreach", "single"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_no_allowed_step_makes_a_finite_weight_non_finite(dtype, how):
    """At the largest rate train.py allows (1) and any clipped gradient below SAFE_GRAD_NORM, AdamW's
    step leaves every finite weight finite (the largest ones, 0, a subnormal): the weights need no
    check before a step."""
    from train import RANGES

    assert RANGES["learning_rate"] == "(0, 1]"
    finfo = torch.finfo(dtype)
    start = torch.tensor([finfo.max, -finfo.max, 0.0, finfo.tiny / 4, 1.0, -1.0], dtype=dtype)
    for name, grads in gradient_sequences().items():
        p = torch.nn.Parameter(start.clone())
        opt = adamw(p, how)
        for g in grads:
            p.grad = torch.full_like(p, g)
            opt.step()
            assert torch.isfinite(p).all(), (name, g)


def test_a_gradient_beyond_the_safe_norm_breaks_adamw_and_is_never_stepped():
    """One element of 3e38 has a finite norm that a clip at 3.4e38 keeps: torch's AdamW then overflows its
    moments (weights not finite), so clipped_step skips such a step and leaves weights and moments as they were."""
    grads = [3e38] * 30 + [-3e38]
    for how in ("fused", "foreach", "single"):
        p = torch.nn.Parameter(torch.zeros(1))
        opt = adamw(p, how)
        for g in grads:
            p.grad = torch.tensor([g])
            opt.step()
        assert not torch.isfinite(p).all(), how
    p = torch.nn.Parameter(torch.zeros(1))
    opt = make_optimizer(1.0, [p], 100)[0]
    for g in grads:
        p.grad = torch.tensor([g])
        grad_norm, took = clipped_step(opt, 3.4e38)
        assert grad_norm == pytest.approx(abs(g)) and not took
    assert p.item() == 0.0 and not opt.state


def test_a_non_finite_gradient_is_never_stepped_and_a_sane_one_is():
    p = torch.nn.Parameter(torch.ones(3))
    opt, _ = make_optimizer(1e-2, [p], 10)
    opt.param_groups[0]["lr"] = 1e-2
    p.grad = torch.tensor([1.0, float("inf"), 0.0])
    assert not clipped_step(opt, 1.0)[1] and torch.equal(p.detach(), torch.ones(3)) and not opt.state
    p.grad = torch.tensor([1.0, -1.0, 0.0])
    grad_norm, took = clipped_step(opt, 1.0)
    assert took and grad_norm == pytest.approx(math.sqrt(2)) and not torch.equal(p.detach(), torch.ones(3))
    assert p.grad is None


def test_float16_weights_break_in_adamw_and_are_refused():
    """In float16 a gradient of 1e-3 gives a second moment of 1e-8, which is 0 there (the fused step keeps
    0), and unfused AdamW's eps (1e-8) is 0 too: an infinite step at a rate of 1e-6. make_optimizer refuses
    float16 weights, naming the fix."""
    for how in ("fused", "single"):
        p = torch.nn.Parameter(torch.ones(4, dtype=torch.float16))
        opt = adamw(p, how)
        opt.param_groups[0]["lr"] = 1e-6
        p.grad = torch.full_like(p, 1e-3)
        opt.step()
        assert not opt.state[p]["exp_avg_sq"].any()
        assert torch.isinf(p).all() == (how == "single")
    with pytest.raises(ValueError, match="float16"):
        make_optimizer(1e-6, [torch.nn.Parameter(torch.ones(4, dtype=torch.float16))], 10)
    make_optimizer(1e-6, [torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))], 10)


def test_a_step_reads_the_host_once_and_the_weights_check_not_at_all():
    """clipped_step reads the host once (the norm and the verdict together), whether it steps or skips; the
    weights' check, finite_weights, leaves its flag on the device for the step's metrics read to carry."""
    from conftest import host_reads

    p = torch.nn.Parameter(torch.ones(3))
    opt, _ = make_optimizer(1e-2, [p], 10)
    opt.param_groups[0]["lr"] = 1e-2
    for grad, steps in (([1.0, -1.0, 0.0], True), ([1.0, float("inf"), 0.0], False), ([float("nan")] * 3, False)):
        p.grad = torch.tensor(grad)
        with host_reads() as reads:
            _, took = clipped_step(opt, 1.0)
        assert took == steps and len(reads) == 1, reads
    with host_reads() as reads:
        flag = finite_weights([p])
    assert reads == [] and flag.item() == 1.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_finite_weights_finds_one_bad_number(dtype):
    params = [torch.nn.Parameter(torch.ones(5, 5, dtype=dtype)) for _ in range(3)]
    assert finite_weights(params) == 1 and finite_weights([]) == 1
    for bad in (float("nan"), float("inf"), -float("inf")):
        with torch.no_grad():
            params[1][2, 3] = bad
        assert finite_weights(params) == 0
        with torch.no_grad():
            params[1][2, 3] = 1.0


STEP_MEMORY = """
import resource, sys, torch
sys.path.insert(0, {root!r})
from plumbing.optim import clipped_step, make_optimizer
torch.set_num_threads(1)
n = {n}
p = torch.nn.Parameter(torch.ones(n))
opt = {opt}
opt.param_groups[0]["lr"] = 1e-3
state = dict(step=torch.tensor(3.0), exp_avg=torch.full_like(p, 0.5), exp_avg_sq=torch.full_like(p, 2.0))
opt.state[p] = state
p.grad = torch.full_like(p, 0.25)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
{step}
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024 / (4 * n))
"""


def step_memory(step, opt="torch.optim.AdamW([p], betas=(0.9, 0.99), weight_decay=0.01)", n=32 * 2**20):
    """The peak memory one step adds over weights, gradient and moments, in units of the weights' size."""
    code = STEP_MEMORY.format(root=ROOT, n=n, step=step, opt=opt)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return float(out.stdout.split()[-1])


def test_the_step_costs_no_more_memory_than_torchs_adamw_step():
    """clipped_step (clip, checks, step) against torch's AdamW step alone (unfused here, so that both have
    temporaries to compare), on a 128 MiB float32 weight: peak memory above the resident weights, gradient
    and moments (ru_maxrss in a fresh process)."""
    alone, ours = step_memory("opt.step()"), step_memory("clipped_step(opt, 1.0)")
    assert ours <= alone + 0.1, (ours, alone)


def test_the_optimizer_is_the_one_transformers_builds_for_the_released_config():
    """transformers' Trainer with the release's train.yaml values (and its default optimizer under this
    torch: fused AdamW) builds the same optimizer class and settings; clipped_step with it adds no
    tensor-sized temporary (under 0.1 of the weights' size; foreach AdamW adds one, unfused two): what
    bench/memory.py's step column counts."""
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(
        output_dir="unused", learning_rate=5e-6, adam_beta1=0.9, adam_beta2=0.99, weight_decay=0.01, report_to=[]
    )
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
    opt, _ = make_optimizer(5e-6, [torch.nn.Parameter(torch.zeros(2))], 10)
    ours = {k: opt.defaults[k] for k in [*kwargs, "weight_decay"]}
    assert type(opt) is cls and ours == kwargs | dict(weight_decay=args.weight_decay)
    assert step_memory("clipped_step(opt, 1.0)", opt="make_optimizer(1e-3, [p], 100)[0]") < 0.1  # bench/memory.py
