"""agrpo.py: the loss by hand, clipping boundaries, on-policy ratios, no reference pass at β = 0."""

import contextlib
import math
from types import SimpleNamespace

import pytest
import torch
from conftest import chat
from hypothesis import given, settings
from hypothesis import strategies as st

from agrpo import (
    MicroBatch,
    accumulate_gradients,
    clipped_objective,
    draw_loss,
    equal_groups,
    group_advantages,
    k3,
    kept_rows,
    prepare,
)
from likelihood import ESTIMATORS, SCHEMES, completion_mask, token_logp
from plumbing.model import load
from sample import generate

UPDATE = SimpleNamespace(num_iterations=1, epsilon=0.2, epsilon_high=0.2, beta=0.0, max_grad_norm=1.0)


def test_advantages_mean_centred_and_degenerate_groups():
    r = torch.tensor([1.0, 3.0, 2.0, 2.0, 4.0, 4.0, 4.0, 4.0])
    assert group_advantages(r, 4).tolist() == [-1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    scaled = group_advantages(r, 4, scale_rewards=True)
    assert torch.isfinite(scaled).all() and scaled[4:].eq(0).all()  # all-equal group: zero, not NaN
    # TRL's scale_rewards: the sample std, sqrt(2/3) for deviations (-1, 1, 0, 0)
    torch.testing.assert_close(scaled[:4], torch.tensor([-1.0, 1.0, 0.0, 0.0]) / (math.sqrt(2 / 3) + 1e-4))
    with pytest.raises(ValueError, match="num_generations"):
        group_advantages(r, 3)


@settings(max_examples=300, deadline=None)
@given(
    value=st.one_of(st.sampled_from([1 / 3, 2 / 3, 4 / 3, 0.1, 1.1]), st.floats(-1e6, 1e6)),
    size=st.integers(2, 16),
    other=st.lists(st.floats(-10, 10, width=32), min_size=2, max_size=2).filter(lambda o: o[0] != o[1]),
    scale=st.booleans(),
)
def test_equal_rewards_give_exactly_zero_advantage_and_are_left_out(value, size, other, scale):
    """A group of equal rewards next to an unequal one: every advantage of the equal group is exactly
    0.0 (a float mean of seven thirds is not a third), so at β = 0 kept_rows leaves every row of it
    out, and the log's count of such groups is the same test."""
    rewards = torch.tensor([value] * size + other + [other[0]] * (size - 2), dtype=torch.float64)
    adv = group_advantages(rewards, size, scale_rewards=scale)
    assert adv[:size].tolist() == [0.0] * size
    assert set(kept_rows(adv, 0.0).tolist()) <= set(range(size, 2 * size)) and len(kept_rows(adv, 0.1)) == 2 * size
    assert equal_groups(rewards, size).tolist() == [True, False]


def test_the_log_counts_every_equal_group_as_rows_left_out():
    """Countdown-style thirds: the logged fraction of groups with equal rewards is exactly the fraction
    of rows the update left out when no row of an unequal group sits at its mean."""
    from plumbing.logs import step_means

    rewards = torch.tensor([1 / 3] * 8 + [2 / 3] * 8 + [0.0, 1 / 3, 2 / 3, 1.0, 0.0, 1 / 3, 2 / 3, 1.0])
    adv = group_advantages(rewards, 8)
    rollout = SimpleNamespace(
        is_eos=torch.zeros(24, 4, dtype=torch.bool), entropy=torch.zeros(24, 4), passes=torch.ones(24)
    )
    b = SimpleNamespace(
        rewards=rewards, accuracy=torch.zeros(24), lengths=torch.ones(24), rollout=rollout,
        advantages=adv, rows=kept_rows(adv, 0.0), prompts_cut=0,
    )  # fmt: skip
    read = dict(in_text=[completion_mask(rollout)], equal_groups=[equal_groups(rewards, 8)])  # as train.py reads them
    logged = step_means(SimpleNamespace(num_generations=8), [b], 0.0, {}, "cpu", **read)
    assert logged["frac_reward_zero_std"] == logged["frac_rows_left_out"] == pytest.approx(2 / 3)


def test_loss_by_hand():
    """Two rows, two read tokens each; weights and norms chosen so every factor shows."""
    logp = torch.tensor([[math.log(0.5), math.log(0.9), 0.0], [math.log(0.17), 0.0, math.log(0.4)]])
    old = torch.tensor([[math.log(0.4), math.log(0.9), -5.0], [math.log(0.2), 0.0, math.log(0.2)]])
    read = torch.tensor([[True, True, False], [True, False, True]])
    adv = torch.tensor([1.0, -2.0])
    weight, norm = torch.tensor([3.0, 2.0]), torch.tensor([6.0, 4.0])
    loss, m = draw_loss(logp, old, adv, read, weight, norm, epsilon=0.2, epsilon_high=0.2)
    # row 0 (A=+1): ratios 1.25 -> clipped to 1.2, and 1.0: -(1.2 + 1.0); scale 3/6
    # row 1 (A=-2): ratios 0.85 (inside) and 2.0: -min(-1.7, -1.7) = 1.7, -min(-4, -2.4) = 4; scale 2/4
    expected = (0.5 * -(1.2 + 1.0) + 0.5 * (1.7 + 4.0)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert (
        m["tokens"] == 4 and m["clipped_high"] == 1 and m["clipped_low"] == 0
    )  # only row 0's 1.25 (row 1's 2.0 with A<0 is not clipped)


def test_clip_engages_exactly_outside_the_range():
    epsilon, epsilon_high = 0.1, 0.3
    ratios = torch.tensor([0.85, 0.9, 0.95, 1.0, 1.2, 1.3, 1.35])
    logp, old = ratios.log(), torch.zeros(7)
    for a, expect in [(1.0, [False] * 6 + [True]), (-1.0, [True] + [False] * 6)]:
        _, clipped, _ = clipped_objective(
            logp.clone().requires_grad_(), old, torch.full((7,), a), epsilon=epsilon, epsilon_high=epsilon_high
        )
        assert clipped.tolist() == expect
        x = logp.clone().requires_grad_()
        obj, _, _ = clipped_objective(x, old, torch.full((7,), a), epsilon=epsilon, epsilon_high=epsilon_high)
        obj.sum().backward()
        assert ((x.grad == 0) == clipped).all()  # zero gradient exactly where clipped


def test_k3_is_nonnegative_and_zero_on_policy():
    a = torch.randn(100)
    assert (k3(a, a) == 0).all()
    assert (k3(a, a + torch.randn(100)) >= 0).all()


def test_the_kl_terms_gradient_is_the_kls():
    """On a categorical policy, with tokens drawn from π_old = π_θ (detached), the expectation of draw_loss's
    β·ρ·k3 term over the draw (every token, weighted by its π_old probability) has the value KL(π_θ || π_ref)
    and the gradient ∇KL(π_θ || π_ref), computed exactly; plain k3's gradient is not it."""
    g = torch.Generator().manual_seed(0)
    theta, ref = torch.randn(6, generator=g, requires_grad=True), torch.randn(6, generator=g).log_softmax(0)
    logp = theta.log_softmax(0)
    p_old = logp.detach().exp()
    V = len(p_old)  # one draw per token, reading it, weighted by its probability under π_old
    read = torch.eye(V, dtype=torch.bool)[:, None, :]  # (K = V, B = 1, G = V)
    loss, _ = draw_loss(
        logp.expand(V, 1, V),
        logp.detach().expand(V, 1, V),
        torch.zeros(1),
        read,
        p_old[:, None],
        torch.ones(1),
        beta=1.0,
        ref_logp=ref.expand(V, 1, V),
    )
    kl = (logp.exp() * (logp - ref)).sum()
    torch.testing.assert_close(loss, kl, rtol=1e-5, atol=1e-6)
    (grad,) = torch.autograd.grad(loss, theta, retain_graph=True)
    torch.testing.assert_close(grad, torch.autograd.grad(kl, theta, retain_graph=True)[0], rtol=1e-4, atol=1e-6)
    (plain,) = torch.autograd.grad((p_old * k3(logp, ref)).sum(), theta)
    assert (plain - grad).abs().max() > 1e-2


@pytest.fixture(scope="module")
def rollout_setup():
    model, tok = load("tiny", seed=1, tiny_overrides=dict(init_std=0.2))
    prompts = [chat(tok, "3 4 5 -> 17")] * 4 + [chat(tok, "1 2 3 -> 9")] * 4
    r = generate(
        model,
        prompts,
        max_completion_length=16,
        block_length=8,
        sampling_steps=8,
        mask_id=tok.mask_token_id,
        eos_ids=tok.eos_ids,
        pad_id=tok.pad_token_id,
        temperature=1.0,
        top_k=30,
        unmasking="random",
        generator=torch.Generator().manual_seed(0),
    )
    return model, tok, r


def test_on_policy_ratios_are_one(rollout_setup):
    model, _, r = rollout_setup
    draws, old, ref = prepare(model, r, estimator="stepwise", k=3, mu=1, generator=torch.Generator().manual_seed(1))
    assert ref is None
    for j in range(3):
        with torch.no_grad():
            logp = token_logp(model, r, draws[0].x[j], draws[0].read[j])
        ratio = (logp - old[0][j]).exp()[draws[0].read[j]]
        torch.testing.assert_close(ratio, torch.ones_like(ratio), atol=1e-5, rtol=0)


class Counting(torch.nn.Module):
    """The model it wraps (its family and layout too), counting its forward passes."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls, self.config, self.model = inner, 0, inner.config, inner.model

    def forward(self, *a, **k):
        self.calls += 1
        return self.inner(*a, **k)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_beta_zero_runs_no_reference_pass(rollout_setup, estimator):
    model, _, r = rollout_setup
    ref = Counting(model)
    prepare(model, r, estimator=estimator, k=2, mu=1, generator=torch.Generator().manual_seed(2), ref_model=None)
    assert ref.calls == 0
    counted = Counting(model)
    _, _, ref_lp = prepare(
        counted, r, estimator=estimator, k=2, mu=1, generator=torch.Generator().manual_seed(2), ref_model=ref
    )
    assert ref.calls > 0 and ref_lp is not None
    assert counted.calls == (0 if estimator == "stepwise" else ref.calls)  # AGRPO's π_old is free


# every estimator of the code's list, the stepwise one with every scheme: one added in likelihood.py is run here
VARIANTS = [("stepwise", s) for s in SCHEMES] + [(e, "low_discrepancy") for e in ESTIMATORS if e != "stepwise"]


@pytest.mark.parametrize("estimator, scheme", VARIANTS)
def test_one_step_changes_params_and_lowers_loss(rollout_setup, estimator, scheme):
    _, tok, r = rollout_setup
    model, _ = load("tiny", seed=1, tiny_overrides=dict(init_std=0.2))
    adv = group_advantages(torch.tensor([1.0, 0.0, 2.0, 1.0, 0.0, 3.0, 0.0, 1.0]), 4)
    gen = torch.Generator().manual_seed(3)
    draws, old, _ = prepare(model, r, estimator=estimator, k=4, mu=1, generator=gen, scheme=scheme)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.005)
    batch = micro_batch(r, adv, draws, old)
    loss0, m = accumulate_gradients(
        model, [batch], 0, epsilon=10.0, epsilon_high=10.0, beta=0.0
    )  # no clipping: a pure gradient step
    opt.step()
    opt.zero_grad()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    loss1, _ = accumulate_gradients(model, [batch], 0, epsilon=10.0, epsilon_high=10.0, beta=0.0)
    assert loss1 < loss0, (loss0, loss1)
    assert m["tokens"] > 0 and math.isfinite(loss0)


def test_clip_low_and_high_are_counted_apart():
    from agrpo import draw_loss

    old = torch.zeros(2, 3)
    logp = torch.tensor([[0.5, -0.5, 0.0], [0.5, -0.5, 0.0]])  # ratios e^0.5 (above 1.2), e^-0.5 (below 0.8), 1
    adv = torch.tensor([1.0, -1.0])
    read = torch.ones(2, 3, dtype=torch.bool)
    _, m = draw_loss(logp, old, adv, read, torch.ones(2), torch.ones(2))
    assert (m["clipped_high"], m["clipped_low"], m["tokens"]) == (1, 1, 6)  # row 0's high ratio, row 1's low one


def micro_batch(r, adv, draws, old, rows=None, ref=None):
    B = len(adv)
    rows = kept_rows(adv, 0.0) if rows is None else rows
    return MicroBatch(r, [""] * B, torch.zeros(B), torch.zeros(B), torch.zeros(B), adv, rows, draws, old, ref)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_rows_with_zero_advantage_left_out_give_the_same_gradient(rollout_setup, estimator):
    """Group 0's rewards are all equal (advantages 0) and two rows of group 1 sit at its mean: with
    β = 0 their loss terms and gradients are exactly 0, so the micro-batch leaves them out and the
    1/N still counts them. Running every row gives the same loss and gradient to float rounding."""
    _, _, r = rollout_setup
    model, _ = load("tiny", seed=1, tiny_overrides=dict(init_std=0.2))
    adv = group_advantages(torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 2.0, 1.0, 1.0]), 4)
    assert (adv == 0).sum() == 6 and kept_rows(adv, 0.0).tolist() == [4, 5] and len(kept_rows(adv, 0.1)) == 8
    draws, old, _ = prepare(model, r, estimator=estimator, k=3, mu=1, generator=torch.Generator().manual_seed(4))

    def gradient(rows):
        model.zero_grad(set_to_none=True)
        loss, _ = accumulate_gradients(
            model, [micro_batch(r, adv, draws, old, rows)], 0, epsilon=0.2, epsilon_high=0.2, beta=0.0
        )
        return loss, [p.grad.clone() for p in model.parameters()]

    (loss_kept, grad_kept), (loss_all, grad_all) = gradient(None), gradient(torch.arange(8))
    assert any(g.abs().sum() > 0 for g in grad_kept)
    assert abs(loss_kept - loss_all) <= 1e-6 * max(1.0, abs(loss_all))
    worst = max(((a - b).abs().max() / a.abs().max().clamp(min=1e-30)).item() for a, b in zip(grad_all, grad_kept))
    assert worst < 1e-5


def test_the_update_runs_one_forward_and_backward_per_micro_batch_and_draw(rollout_setup):
    """agrpo.py's docstring: on a model that does not pack draws, each micro-batch's k draws take one forward
    (of all its kept rows) and one backward each, so memory is one forward of a micro-batch whatever k is."""
    _, _, r = rollout_setup
    model, _ = load("tiny", seed=1, tiny_overrides=dict(init_std=0.2))
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5, 0.0, 2.0, 1.0, -3.0])
    draws, old, _ = prepare(model, r, estimator="stepwise", k=3, mu=1, generator=torch.Generator().manual_seed(4))
    rows_seen, backwards = [], [0]
    model.register_forward_pre_hook(
        lambda m, args, kw: rows_seen.append(len(args[0] if args else kw["input_ids"])), with_kwargs=True
    )
    next(model.parameters()).register_hook(lambda g: backwards.__setitem__(0, backwards[0] + 1))  # once a backward
    batches = [micro_batch(r, adv, draws, old), micro_batch(r, adv, draws, old)]
    accumulate_gradients(model, batches, 0, epsilon=0.2, epsilon_high=0.2, beta=0.0)
    assert rows_seen == [7] * 6 and backwards[0] == 6  # 2 micro-batches × 3 draws, the 7 rows of nonzero A


def test_a_micro_batch_without_rows_gives_zero_gradients(rollout_setup):
    """Every row left out: one row's zero loss still runs (a DDP rank takes part in the all-reduce),
    so .grad holds zeros, and AdamW decays and steps as it would with a zero gradient."""
    _, _, r = rollout_setup
    model, _ = load("tiny", seed=1, tiny_overrides=dict(init_std=0.2))
    adv = torch.zeros(8)
    draws, old, _ = prepare(model, r, estimator="stepwise", k=2, mu=1, generator=torch.Generator().manual_seed(4))
    loss, metrics = accumulate_gradients(
        model, [micro_batch(r, adv, draws, old)], 0, epsilon=0.2, epsilon_high=0.2, beta=0.0
    )
    assert loss == 0.0 and metrics == {}
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())


def test_a_step_from_a_non_finite_gradient_is_not_taken(rollout_setup):
    """An advantage that overflows the loss: the gradient is not finite, so the step is skipped and
    counted, and weights and moments stay exactly as they were; finite advantages step."""
    from plumbing.optim import make_optimizer
    from train import update

    _, _, r = rollout_setup
    model, _ = load("tiny", seed=1, tiny_overrides=dict(init_std=0.2))
    adv = group_advantages(torch.tensor([1.0, 0.0, 2.0, 1.0, 0.0, 3.0, 0.0, 1.0]), 4)
    draws, old, _ = prepare(model, r, estimator="stepwise", k=2, mu=1, generator=torch.Generator().manual_seed(3))
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    opt, _ = make_optimizer(1e-3, params, 10)
    opt.param_groups[0]["lr"] = 1e-3  # past the warmup's first step (rate 0)
    overflow = [micro_batch(r, adv * float("inf"), draws, old)]
    _, _, grad_norm, skipped = update(model, opt, overflow, UPDATE, contextlib.nullcontext)
    assert not math.isfinite(grad_norm) and skipped == 1 and not opt.state
    assert all(torch.equal(a, b) for a, b in zip(before, params))
    _, _, _, skipped = update(model, opt, [micro_batch(r, adv, draws, old)], UPDATE, contextlib.nullcontext)
    assert skipped == 0 and any(not torch.equal(a, b) for a, b in zip(before, params))


def test_an_update_reads_the_host_once_an_optimizer_step_and_once_for_its_numbers(rollout_setup, monkeypatch):
    """μ = 2 updates: beside the gradients' passes, one read in each optimizer step (the norm and the verdict), one
    for the step's loss and metrics, which carries the weights' finite check (1, and 0 once a weight is not
    finite): no read of its own."""
    from conftest import host_reads

    import train
    from plumbing.optim import make_optimizer
    from train import update

    reads, passes = [], []

    def apart(*args, **kwargs):  # the reads of the gradients' passes, counted apart
        start = len(reads)
        out = accumulate_gradients(*args, **kwargs)
        passes.append(len(reads) - start)
        return out

    monkeypatch.setattr(train, "accumulate_gradients", apart)

    _, _, r = rollout_setup
    model, _ = load("tiny", seed=1, tiny_overrides=dict(init_std=0.2))
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5, 0.0, 2.0, 1.0, -3.0])
    draws, old, _ = prepare(model, r, estimator="stepwise", k=2, mu=2, generator=torch.Generator().manual_seed(3))
    params = [p for p in model.parameters() if p.requires_grad]
    opt, _ = make_optimizer(1e-3, params, 10)
    twice = SimpleNamespace(**{**vars(UPDATE), "num_iterations": 2})
    batches = [micro_batch(r, adv, draws, old)]
    with host_reads(reads):
        _, metrics, _, skipped = update(model, opt, batches, twice, contextlib.nullcontext)
    assert len(passes) == 2 and len(reads) - sum(passes) == 3, reads
    assert skipped == 0 and metrics["weights_finite"] == 1.0
    with torch.no_grad():
        params[0].view(-1)[0] = float("inf")
    _, metrics, _, _ = update(model, opt, [micro_batch(r, adv, draws, old)], UPDATE, contextlib.nullcontext)
    assert metrics["weights_finite"] == 0.0


HOST_READS = ("item", "tolist", "__bool__", "__float__", "__int__", "nonzero")  # what waits for the device


def test_nothing_is_read_to_the_host_between_a_draws_forward_and_its_backward(rollout_setup, monkeypatch):
    """A read between a forward and its backward (a metric's .item()) drains the GPU's queue before the backward
    is queued: every draw's forward (model hook) to the start of its backward (a hook on the logits' gradient)
    reads nothing, and update reads the step's loss and metrics once (logs.read_once), equal to the sums read
    one by one."""
    from plumbing import logs

    _, _, r = rollout_setup
    model, _ = load("tiny", seed=1, tiny_overrides=dict(init_std=0.2))
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5, 0.0, 2.0, 1.0, -3.0])
    draws, old, _ = prepare(model, r, estimator="stepwise", k=3, mu=1, generator=torch.Generator().manual_seed(4))
    window, reads, passes = [False], [], [0]

    def after_forward(module, args, output):
        window[0], passes[0] = True, passes[0] + 1
        output.logits.register_hook(lambda g: window.__setitem__(0, False))  # the first gradient of the backward

    model.register_forward_hook(after_forward)
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, _name=name, **kw):
            if window[0]:
                reads.append(_name)
            return _original(self, *a, **kw)

        monkeypatch.setattr(torch.Tensor, name, counted)
    batches = [micro_batch(r, adv, draws, old), micro_batch(r, adv, draws, old)]
    loss, metrics = accumulate_gradients(model, batches, 0, epsilon=0.2, epsilon_high=0.2, beta=0.0)
    assert passes[0] == 6 and reads == []
    assert all(torch.is_tensor(v) for v in (loss, *metrics.values()))
    monkeypatch.undo()
    read = logs.read_once({"loss": loss, **metrics})
    assert read == {"loss": loss.item(), **{k: v.item() for k, v in metrics.items()}}
    assert all(type(v) is float for v in read.values())
