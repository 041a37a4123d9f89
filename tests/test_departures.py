"""ALGORITHM.md's "Where this code departs from the release, d1 or transformers": each sentence about this code,
checked against the code (the other side of each sentence is the release's, d1's or transformers' behaviour)."""

import os
import re

import pytest
import torch
from conftest import chat

from agrpo import draw_loss, k3
from likelihood import completion_mask, draws_logp, make_draws, sample_steps, steps_used
from plumbing.logits import forward_logits
from plumbing.model import load
from sample import decode_completions, generate, policy_logprobs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny():
    model, tok = load("tiny", seed=0, tiny_overrides=dict(init_std=0.3))
    return model.eval(), tok


def rollout(model, tok, eos_ids, temperature=0.0, top_k=None, seed=0):
    prompts = [chat(tok, p) for p in ("3 4 5 -> 17", "1 2 3 -> 9", "9 9 -> 81", "2 7 -> 14")]
    kw = dict(max_completion_length=24, block_length=8, sampling_steps=12, mask_id=tok.mask_token_id)
    kw |= dict(eos_ids=eos_ids, pad_id=tok.pad_token_id, temperature=temperature, top_k=top_k)
    return generate(model, prompts, generator=torch.Generator().manual_seed(seed), **kw)


def test_the_section_is_in_algorithm_md():
    text = open(os.path.join(ROOT, "ALGORITHM.md")).read()
    section = text.split("## Where this code departs from the release, d1 or transformers", 1)[1].split("\n## ")[0]
    assert len(re.findall(r"^- ", section, re.M)) >= 8 and "tests/test_departures.py" in section


def test_top_p_keeps_the_token_that_crosses_p_as_transformers_does():
    from transformers.generation.logits_process import TopPLogitsWarper

    probs = torch.tensor([0.5, 0.3, 0.2, 0.0])
    kept = policy_logprobs(probs.log(), mask_id=3, temperature=1.0, top_p=0.7).isfinite()
    assert kept.tolist() == [True, True, False, False]  # 0.5 alone is below 0.7: the crossing 0.3 stays
    logits = torch.randn(64, 50, generator=torch.Generator().manual_seed(0)) * 3
    for p in (0.3, 0.7, 0.9, 0.99):
        ours = policy_logprobs(logits, mask_id=0, temperature=1.0, top_p=p).isfinite()
        masked = logits.clone()
        masked[:, 0] = float("-inf")  # ours never keeps [MASK]
        theirs = TopPLogitsWarper(p)(None, masked).isfinite()
        assert torch.equal(ours, theirs), p


def test_a_completion_ends_at_its_first_eos(tiny):
    """A row whose finished block holds an EOS is EOS from the next block on; the text is what precedes the
    first EOS."""
    model, tok = tiny
    free = rollout(model, tok, ())
    eos = int(torch.mode(free.completion[:, :8].flatten()).values)  # a token some rows emit in their first block
    r = rollout(model, tok, (eos,))
    ended = 0
    for row, text in zip(r.completion, decode_completions(tok, r)[0]):
        hits = (row == eos).nonzero()
        if not len(hits):
            continue
        first = int(hits[0])
        ended += 1
        assert (row[(first // 8 + 1) * 8 :] == eos).all()  # the blocks after the EOS's are EOS
        assert text == tok.decode(row[:first].tolist(), skip_special_tokens=True)
    assert ended


def test_uniform_draws_reach_the_last_step_that_committed_a_non_eos_token(tiny):
    model, tok = tiny
    r = rollout(model, tok, tok.eos_ids, temperature=1.0)
    steps, _ = sample_steps(r, 200, "uniform", torch.Generator().manual_seed(0))
    for row, m in zip(steps, steps_used(r).tolist()):
        assert set(row.tolist()) == set(range(m))  # m' − 1 included


def test_the_update_recomputes_truncation_keeping_the_sampled_token():
    logits = torch.tensor([[4.0, 3.0, 0.0, -1.0]])
    assert not policy_logprobs(logits, mask_id=3, temperature=1.0, top_k=1)[0, 1].isfinite()
    lp = policy_logprobs(logits, mask_id=3, temperature=1.0, top_k=1, keep=torch.tensor([1]))
    assert lp[0, :2].isfinite().all() and not lp[0, 2].isfinite()  # the sampled token 1 kept, nothing else added


def test_mask_is_never_in_the_policy():
    logits = torch.tensor([[0.0, 1.0, 9.0]])  # [MASK] (id 2) the most likely
    assert policy_logprobs(logits, mask_id=2, temperature=0.7)[0, 2] == float("-inf")


def test_the_kl_term_is_rho_k3_whatever_the_estimator():
    """draw_loss takes no estimator: one-step draws get the same ρ·k3 as stepwise ones."""
    g = torch.Generator().manual_seed(0)
    logp, old, ref = (-torch.rand(1, 2, 5, generator=g) * 3 for _ in range(3))
    read = torch.ones(1, 2, 5, dtype=torch.bool)
    _, metrics = draw_loss(logp, old, torch.zeros(2), read, torch.ones(1, 2), torch.ones(2), beta=0.1, ref_logp=ref)
    rho_k3 = ((logp - old).exp() * k3(logp, ref)).sum().item()
    assert metrics["kl"] == pytest.approx(rho_k3, rel=1e-6) and rho_k3 != pytest.approx(k3(logp, ref).sum().item())


@pytest.mark.parametrize("estimator", ["one_step", "elbo"])
def test_one_step_and_elbo_score_the_untruncated_distribution_at_the_sampling_temperature(tiny, estimator):
    model, tok = tiny
    r = rollout(model, tok, tok.eos_ids, temperature=0.7, top_k=3, seed=1)
    draws = make_draws(estimator, r, 1, torch.Generator().manual_seed(0))

    with torch.no_grad():
        got = draws_logp(model, r, draws)[0]
        logits = forward_logits(model, draws.x[0], r.attention_mask)[:, r.prompt_length :].float()
    logits[..., r.mask_id] = float("-inf")
    want = (logits / 0.7).log_softmax(-1).gather(-1, r.completion[..., None]).squeeze(-1)
    read = draws.read[0]
    torch.testing.assert_close(got[read], want[read], atol=1e-5, rtol=0)


def test_one_step_divides_each_row_by_its_own_tokens_through_the_first_eos(tiny):
    model, tok = tiny
    r = rollout(model, tok, tok.eos_ids, temperature=1.0)
    draws = make_draws("one_step", r, 1, torch.Generator().manual_seed(0))
    n = completion_mask(r).sum(1).float()
    assert torch.equal(draws.norm, n)
    read = torch.ones(1, 2, 4, dtype=torch.bool)
    read[0, 1, 2:] = False  # row 0 reads 4 tokens, row 1 two
    zeros = torch.zeros(1, 2, 4)
    advantages, norm = torch.tensor([1.0, 2.0]), torch.tensor([4.0, 2.0])
    loss, _ = draw_loss(zeros, zeros, advantages, read, torch.ones(1, 2), norm)
    assert loss.item() == pytest.approx(-(1.0 * 4 / 4 + 2.0 * 2 / 2) / 2)  # the mean of per-row means, not Σ/6


def test_adamw_decays_every_trained_tensor():
    """One parameter group at weight decay 0.01, norm weights included (the release's Trainer exempts them)."""
    from plumbing.optim import make_optimizer

    model, _ = load("tiny")
    params = [p for p in model.parameters() if p.requires_grad]
    opt, _ = make_optimizer(1e-3, params, 10)
    norms = [p for n, p in model.named_parameters() if "norm" in n]
    assert norms and len(opt.param_groups) == 1 and opt.param_groups[0]["weight_decay"] == 0.01
    assert {id(p) for p in norms} <= {id(p) for p in opt.param_groups[0]["params"]}


def test_training_prompts_are_one_stream_over_the_epochs():
    """A step's prompts that reach past an epoch's end continue with the next epoch's permutation: none dropped."""
    from plumbing.data import prompt_items

    items = [{"i": i} for i in range(10)]
    epoch0, epoch1 = prompt_items(items, 0, 10, seed=0), prompt_items(items, 10, 10, seed=0)
    assert prompt_items(items, 8, 4, seed=0) == epoch0[8:] + epoch1[:2]
    assert sorted(x["i"] for x in epoch0) == sorted(x["i"] for x in epoch1) == list(range(10))
