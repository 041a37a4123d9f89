"""likelihood.py: the stepwise estimator is unbiased (value and gradient); ELBO and one-step are not."""

import copy

import pytest
import torch
from conftest import chat

import likelihood
from likelihood import (
    completion_mask,
    draws_logp,
    elbo_draws,
    exact_logp,
    make_draws,
    one_step_draws,
    sample_steps,
    sequence_logp,
    steps_used,
    stepwise_draws,
)
from plumbing.model import load
from sample import Rollout, generate, policy_logprobs

SCHEMES = [name for name in likelihood.SCHEMES if name != "exact"]  # the sampled ones: every scheme but the sum


@pytest.fixture(scope="module")
def setup():
    # a larger init makes the random model's distributions peaked and uneven across steps
    model, tok = load("tiny", seed=0, tiny_overrides=dict(init_std=0.3))
    model.eval()
    prompts = [chat(tok, "Using the numbers [1, 2, 3], make 7."), chat(tok, "2+3")]
    r = generate(
        model,
        prompts,
        max_completion_length=16,
        block_length=8,
        sampling_steps=16,
        mask_id=tok.mask_token_id,
        eos_ids=tok.eos_ids,
        pad_id=tok.pad_token_id,
        temperature=0.9,
        top_k=40,
        unmasking="random",
        generator=torch.Generator().manual_seed(0),
    )
    return model, tok, r


@pytest.fixture(scope="module")
def threshold_setup(setup):
    """Threshold decoding on the same model: rows with different numbers of steps m'."""
    model, tok, _ = setup
    prompts = [chat(tok, "Using the numbers [1, 2, 3], make 7."), chat(tok, "2+3")]
    r = generate(
        model,
        prompts,
        max_completion_length=16,
        block_length=8,
        sampling_steps=16,
        mask_id=tok.mask_token_id,
        eos_ids=tok.eos_ids,
        pad_id=tok.pad_token_id,
        temperature=0.9,
        top_k=40,
        unmasking="threshold",
        threshold=0.3,
        generator=torch.Generator().manual_seed(0),
    )
    assert len(set(steps_used(r).tolist())) == 2  # the rows' m' differ
    return model, tok, r


@pytest.fixture(params=["fixed_steps", "threshold"])
def rollouts(request, setup, threshold_setup):
    return setup if request.param == "fixed_steps" else threshold_setup


def step_table(model, r):
    """f(t) for every row and step t < m', by exact forward passes: (B, m)."""
    d = stepwise_draws(r, 0, "exact")
    with torch.no_grad():
        f = draws_logp(model, r, d).sum(-1).T  # (B, K)
    return f * d.weight.T


def test_exact_matches_recorded_trajectory(rollouts):
    model, _, r = rollouts
    with torch.no_grad():
        torch.testing.assert_close(exact_logp(model, r), r.logp.sum(1), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_value_unbiased(rollouts, scheme):
    model, _, r = rollouts
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        exact = exact_logp(model, r).sum()
        est = torch.stack([sequence_logp(model, r, stepwise_draws(r, 3, scheme, g)).sum() for _ in range(200)])
    se = est.std() / len(est) ** 0.5
    assert se > 0
    assert abs(est.mean() - exact) < 4 * se, f"{scheme}: mean {est.mean():.3f} exact {exact:.3f} se {se:.3f}"


@pytest.mark.parametrize("scheme", SCHEMES)
def test_gradient_unbiased(rollouts, scheme):
    """The gradient's projection on a fixed random direction v: mean over draws vs exact."""
    model, _, r = rollouts
    params = [p for p in model.parameters()]
    v = [torch.randn(p.shape, generator=torch.Generator().manual_seed(i)) for i, p in enumerate(params)]

    def proj(draws):
        grads = torch.autograd.grad(sequence_logp(model, r, draws).sum(), params)
        return sum((gr * vi).sum() for gr, vi in zip(grads, v))

    exact = proj(stepwise_draws(r, 0, "exact"))
    g = torch.Generator().manual_seed(2)
    est = torch.stack([proj(stepwise_draws(r, 2, scheme, g)) for _ in range(150)])
    se = est.std() / len(est) ** 0.5
    assert se > 0
    assert abs(est.mean() - exact) < 4 * se, f"{scheme}: mean {est.mean():.3f} exact {exact:.3f} se {se:.3f}"


def test_low_discrepancy_variance_not_above_uniform(setup):
    """Variance over 20k draws of the batch estimate, computed on the exact per-step table f(t):
    the estimator is linear in f, so a draw's estimate is Σ w f(t) (checked against the model)."""
    model, _, r = setup
    f = step_table(model, r)
    g = torch.Generator().manual_seed(3)
    s, w = sample_steps(r, 3, "low_discrepancy", g)
    with torch.no_grad():
        via_model = sequence_logp(model, r, stepwise_draws(r, 3, "low_discrepancy", torch.Generator().manual_seed(3)))
    torch.testing.assert_close(via_model, (w * f.gather(1, s)).sum(1), atol=1e-3, rtol=1e-5)
    var = {}
    for scheme in ("uniform", "low_discrepancy"):
        tot = torch.stack(
            [(w * f.gather(1, s)).sum() for s, w in (sample_steps(r, 3, scheme, g) for _ in range(20000))]
        )
        var[scheme] = tot.var().item()
    print(
        f"\nvariance of the batch log-prob estimate, k=3: uniform {var['uniform']:.2f}, low-discrepancy "
        f"{var['low_discrepancy']:.2f}"
    )
    assert var["low_discrepancy"] <= var["uniform"]


@pytest.mark.parametrize("name", [e for e in likelihood.ESTIMATORS if e != "stepwise"])  # the ablations
def test_biased_estimators_run_and_are_biased(setup, name):
    model, _, r = setup
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        exact = exact_logp(model, r)
        est = torch.stack([sequence_logp(model, r, make_draws(name, r, 1, g)) for _ in range(100)])
    se = est.std(0) / len(est) ** 0.5
    gap = (est.mean(0) - exact).abs()
    print(f"\n{name}: mean {est.mean(0).tolist()} exact {exact.tolist()} se {se.tolist()}")
    assert (gap > 4 * se).all()  # a bias the test can see, so nobody mistakes it for exact
    if name == "elbo":
        assert (est.mean(0) < exact).all()  # a lower bound, here far below


@pytest.mark.parametrize("name", likelihood.ESTIMATORS)
def test_estimate_does_not_depend_on_k(setup, name):
    """Σ weight · log p estimates the same quantity (log π(o), or the ELBO) whatever k is: draws
    are averaged, not summed, so every estimator's loss has one scale and meets max_grad_norm alike."""
    model, _, r = setup
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        est = {
            k: torch.stack([sequence_logp(model, r, make_draws(name, r, k, g)) for _ in range(120 // k)])
            for k in (1, 4)
        }
    gap = (est[1].mean(0) - est[4].mean(0)).abs()
    se = (est[1].var(0) / len(est[1]) + est[4].var(0) / len(est[4])).sqrt()
    print(f"\n{name}: k=1 {est[1].mean(0).tolist()} k=4 {est[4].mean(0).tolist()} se {se.tolist()}")
    assert (gap <= 4 * se + 1e-3 * est[1].mean(0).abs()).all()


def test_draws_share_masks_and_are_seeded(setup):
    _, tok, r = setup
    for name in likelihood.ESTIMATORS:
        a = make_draws(name, r, 4, torch.Generator().manual_seed(5))
        b = make_draws(name, r, 4, torch.Generator().manual_seed(5))
        assert torch.equal(a.x, b.x) and torch.equal(a.read, b.read) and torch.equal(a.weight, b.weight)
    state = torch.get_rng_state()
    make_draws("elbo", r, 4, torch.Generator().manual_seed(6))
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is never touched


def test_elbo_and_one_step_masks(setup):
    _, tok, r = setup
    P = r.prompt_length
    d = elbo_draws(r, 8, torch.Generator().manual_seed(7))
    n_masked = (d.x[:, :, P:] == tok.mask_token_id).sum(-1)  # (K, B)
    torch.testing.assert_close(d.weight, 16 / (8 * n_masked.float()))  # G/l, averaged over the k = 8 draws
    assert torch.equal(d.read, d.x[:, :, P:] == tok.mask_token_id)  # every position the weight counts is scored
    assert (
        n_masked.min() >= 1 and n_masked.max() <= 16 and len(set(n_masked.flatten().tolist())) >= 12
    )  # stratified spread
    d = one_step_draws(r, 200, torch.Generator().manual_seed(8))
    assert (d.x[:, :, P:] == tok.mask_token_id).all()
    prompt_masked = d.x[:, :, :P] == tok.mask_token_id
    real = r.attention_mask[:, :P].bool()
    assert not prompt_masked[:, ~real].any()  # padding never masked
    assert abs(prompt_masked[:, real].float().mean().item() - 0.15) < 0.02


def hand_rollout():
    """Two rows, 8 tokens, 8 steps; row 0 ends with EOS committed at steps 6, 7; row 1 all EOS."""
    eos, mask = 2, 1
    comp = torch.tensor([[60, 61, 62, 63, 64, 65, eos, eos], [eos] * 8])
    steps = torch.tensor([[0, 3, 1, 2, 5, 4, 6, 7], [1, 0, 2, 3, 4, 5, 6, 7]])
    ids = torch.cat([torch.full((2, 3), 70), comp], 1)
    return Rollout(ids, torch.ones_like(ids), 3, steps, torch.zeros(2, 8), torch.rand(2, 8), 8, mask, (eos,))


def test_only_steps_up_to_last_content_step_are_drawn():
    r = hand_rollout()
    assert steps_used(r).tolist() == [6, 1]
    assert completion_mask(r).sum(1).tolist() == [7, 1]
    for scheme in SCHEMES:
        s, w = sample_steps(r, 50, scheme, torch.Generator().manual_seed(9))
        assert (s[0] < 6).all() and (s[1] == 0).all() and (w > 0).all()
    s, w = sample_steps(r, 0, "exact")
    assert s.shape == (2, 6) and w.sum(1).tolist() == [6, 1]


def test_bad_names_raise(setup):
    _, _, r = setup
    with pytest.raises(ValueError, match="scheme"):
        sample_steps(r, 2, "sobol")
    with pytest.raises(ValueError, match="estimator"):
        make_draws("vrpo", r, 2)
    with pytest.raises(ValueError, match="k=0"):
        sample_steps(r, 0, "uniform")


def test_sampled_token_never_truncated_away():
    """Top-k/top-p is recomputed from the training pass's logits; a token the rollout sampled at the
    edge of the set keeps a finite log-prob when those logits move (bf16 noise, an update)."""
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.9, 0.0, -1.0]])
    token = torch.tensor([2])  # third: inside top-3 at the rollout
    moved = logits.clone()
    moved[0, 3] = 2.1  # now fourth
    for kw in (dict(top_k=3), dict(top_p=0.85)):
        rollout_lp = policy_logprobs(logits, mask_id=5, temperature=1.0, **kw)
        assert torch.isfinite(rollout_lp[0, 2])
        torch.testing.assert_close(
            policy_logprobs(logits, mask_id=5, temperature=1.0, **kw, keep=token), rollout_lp
        )  # same set: same numbers
        assert policy_logprobs(moved, mask_id=5, temperature=1.0, **kw)[0, 2] == float("-inf")  # what the keep prevents
        assert torch.isfinite(policy_logprobs(moved, mask_id=5, temperature=1.0, **kw, keep=token)[0, 2])


def test_training_logp_finite_after_weights_move(setup):
    model, tok, _ = setup
    prompts = [chat(tok, "Using the numbers [1, 2, 3], make 7."), chat(tok, "2+3")]
    r = generate(
        model,
        prompts,
        max_completion_length=16,
        block_length=8,
        sampling_steps=16,
        mask_id=tok.mask_token_id,
        eos_ids=tok.eos_ids,
        pad_id=tok.pad_token_id,
        temperature=1.0,
        top_k=3,
        top_p=0.9,
        unmasking="random",
        generator=torch.Generator().manual_seed(3),
    )
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(12)))
        d = stepwise_draws(r, 0, "exact")
        lp = draws_logp(moved, r, d)
    assert torch.isfinite(lp[d.read]).all()


def table_rollout(rows=64, seed=0):
    """A rollout without a model: rows of G = 16 tokens unmasked over m = 8 steps, some ending early in EOS
    (m' < m), with uneven entropies; and a known table f(t) (rows, m) that grows with t and with the entropy."""
    g = torch.Generator().manual_seed(seed)
    G, m, P, eos = 16, 8, 3, 2
    unmask_step = torch.stack([torch.randperm(G, generator=g) % m for _ in range(rows)])
    ids = torch.randint(5, 50, (rows, P + G), generator=g)
    for row in range(0, rows, 3):  # every third row: the tokens of its last steps are EOS, so its m' is shorter
        ids[row, P:] = ids[row, P:].masked_fill(unmask_step[row] >= 4 + row % 4, eos)
    entropy = torch.rand(rows, G, generator=g) ** 3
    r = Rollout(ids, torch.ones_like(ids), P, unmask_step, torch.zeros(rows, G), entropy, m, 1, (eos,))
    f = -((1 + torch.arange(m).double()) ** 1.5) - 4 * likelihood.step_entropy(r).double()
    return r, f


def table_check(scheme, batches=400):
    """(estimate's mean, its standard error, exact sum) of Σ_rows Σ_j w_j f(t_j) over independent batches, through
    sample_steps (the draw code train.py runs), for the table of table_rollout."""
    r, f = table_rollout()
    valid = torch.arange(f.shape[1])[None] < steps_used(r)[:, None]
    exact = (f * valid).sum()
    est = []
    for b in range(batches):
        steps, weights = sample_steps(r, 3, scheme, torch.Generator().manual_seed(b))
        est.append((weights.double() * f.gather(1, steps)).sum())
    est = torch.stack(est)
    return est.mean(), est.std() / len(est) ** 0.5, exact


@pytest.mark.parametrize("scheme", list(likelihood.SCHEMES))
def test_every_scheme_estimates_a_known_table_without_bias(scheme):
    """Each scheme of likelihood.SCHEMES, a new one included with no edit here, on a known f(t): the mean
    estimate within 4 standard errors of Σ_{t<m'} f(t) (exact: equal to it)."""
    mean, se, exact = table_check(scheme)
    assert abs(mean - exact) <= 4 * se + 1e-9 * abs(exact), f"{scheme}: mean {mean:.3f} exact {exact:.3f} se {se:.3f}"


def halved_second_half(rollout, used, k, generator):
    """A wrong proposal: low-discrepancy's steps, the second half of the draws at ⌊t/2⌋, the same weights."""
    steps, weights = likelihood.low_discrepancy_steps(rollout, used, k, generator)
    return torch.cat([steps[:, : k // 2], steps[:, k // 2 :] // 2], 1), weights


def entropy_with_uniform_weights(rollout, used, k, generator):
    """A wrong weight: entropy's proposal q(t) weighted m'/k as if it were uniform."""
    steps, _ = likelihood.entropy_steps(rollout, used, k, generator)
    return steps, (used[:, None] / k).double().expand_as(steps)


@pytest.mark.parametrize("mutant", [halved_second_half, entropy_with_uniform_weights])
def test_the_table_check_catches_a_wrong_scheme(monkeypatch, mutant):
    """The check above is not blind: a scheme with a wrong proposal or a wrong weight is many errors off."""
    monkeypatch.setitem(likelihood.SCHEMES, "mutant", mutant)
    mean, se, exact = table_check("mutant")
    assert abs(mean - exact) > 10 * se, f"mean {mean:.3f} exact {exact:.3f} se {se:.3f}"
