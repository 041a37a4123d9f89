"""blocks.py on the embedded block-diffusion model (tiny_block, blocks of 8): the cached rollout makes
the same tokens as recomputing every step, and the packed forward gives every step's log-probs, value
and gradient, as one forward per step does."""

import dataclasses
import math

import pytest
import torch
from conftest import chat

from agrpo import MicroBatch, accumulate_gradients
from likelihood import draw_passes, draws_logp, packs, stepwise_draws, token_logp
from plumbing.block_attention import block_of
from plumbing.logits import count_positions
from plumbing.model import add_lora, load, set_gradient_checkpointing
from sample import generate

BLOCK = dict(tiny_overrides=dict(init_std=0.3))  # larger weights: confident, varied logits


def block_model(seed=0):
    return load("tiny_block", seed=seed, **BLOCK)


@pytest.fixture(scope="module")
def prompts_and_eos():
    model, tok = block_model()
    prompts = [chat(tok, "Using the numbers [1, 2, 3], make 7."), chat(tok, "2+3"), chat(tok, "9 9 -> 81")]
    greedy = generate(model, prompts, max_completion_length=32, block_length=8, sampling_steps=16, mask_id=1)
    common = int(torch.mode(greedy.completion[:, :8].flatten()).values)  # a token some rows emit early
    return prompts, (common,)


@pytest.mark.parametrize("temperature", [0.0, 0.9])
@pytest.mark.parametrize("stop", ["none", "early"])
def test_cached_rollout_makes_the_tokens_of_recomputing(prompts_and_eos, temperature, stop):
    """Greedy and seeded sampling over the KV cache of finished blocks: the same tokens and steps as
    running the whole sequence at every step, log-probs to float rounding, rows that end early left
    out of the cache as they are of the computation; the forward positions are the prompt once, each
    block once per step and once more to store it (the last block excepted), for the rows still running."""
    prompts, eos = prompts_and_eos
    model, tok = block_model()
    count = count_positions(model)
    kw = dict(max_completion_length=32, block_length=8, sampling_steps=16, mask_id=tok.mask_token_id)
    kw |= dict(eos_ids=eos if stop == "early" else (), pad_id=tok.pad_token_id, temperature=temperature, top_k=20)
    runs = {}
    for cached in (True, False):
        count[0] = 0
        runs[cached] = generate(model, prompts, generator=torch.Generator().manual_seed(1), kv_cache=cached, **kw)
        runs[cached].positions = count[0]
    cached, full = runs[True], runs[False]
    assert torch.equal(cached.ids, full.ids) and torch.equal(cached.unmask_step, full.unmask_step)
    torch.testing.assert_close(cached.logp, full.logp, atol=1e-4, rtol=0)
    torch.testing.assert_close(cached.entropy, full.entropy, atol=1e-4, rtol=0)
    assert torch.equal(cached.passes, full.passes)
    if stop == "early":
        assert cached.passes.min() < cached.passes.max()  # some rows did stop early
    B, P = cached.ids.shape[0], cached.prompt_length
    # the prompts' whole blocks once, each block once per step and once more to store it (the last excepted)
    assert cached.positions <= B * P + 8 * (int(cached.passes.sum()) + B * 5)
    assert full.positions > 4 * cached.positions


def test_a_cached_rollout_runs_the_positions_algorithm_md_counts():
    """ALGORITHM.md §6: a rollout whose prompt fills whole blocks runs P + (s + 1)·G − b positions a row: the
    prompt once, each block s times while it is unmasked and once more to store it, except the last."""
    model, tok = block_model()
    count = count_positions(model)
    P, G, b, m = 16, 32, 8, 16
    prompts = [[5 + i for i in range(P)], [7 + i for i in range(P)]]
    kw = dict(max_completion_length=G, block_length=b, sampling_steps=m, mask_id=tok.mask_token_id)
    rollout = generate(model, prompts, pad_id=tok.pad_token_id, **kw)
    s = m * b // G
    assert rollout.passes.tolist() == [m, m] and count[0] == len(prompts) * (P + (s + 1) * G - b)


def sampled(model, tok, prompts, eos, unmasking="low_confidence"):
    kw = dict(max_completion_length=32, block_length=8, sampling_steps=16, mask_id=tok.mask_token_id, eos_ids=eos)
    kw |= dict(pad_id=tok.pad_token_id, temperature=0.9, top_k=20, unmasking=unmasking, threshold=0.5)
    return generate(model, prompts, generator=torch.Generator().manual_seed(1), **kw)


@pytest.mark.parametrize("variant", ["full", "lora", "checkpointing"])
@pytest.mark.parametrize("scheme", ["exact", "uniform"])
def test_packed_steps_equal_one_forward_per_step(prompts_and_eos, variant, scheme):
    """All of a row's stepwise draws in one forward (clean sequence + a noisy copy of a block per
    step) give the log-probs and their gradient of running each x_t in full, with and without LoRA
    and activation checkpointing; the exact sum equals the rollout's recorded log-probs; the packed
    forward runs P + G + K·8 positions a row instead of K·(P + G)."""
    prompts, eos = prompts_and_eos
    model, tok = block_model()
    rollout = sampled(model, tok, prompts, eos)
    if variant == "lora":
        model = add_lora(model, 4, 8)
        for name, p in model.named_parameters():
            if "lora_B" in name:  # nonzero adapters, so their gradients flow through the whole model
                torch.nn.init.normal_(p, std=0.05, generator=torch.Generator().manual_seed(0))
    if variant == "checkpointing":
        set_gradient_checkpointing(model)
        model.train()
    draws = stepwise_draws(rollout, 3, scheme, torch.Generator().manual_seed(0))
    assert packs(model, draws) and draw_passes(model, draws) == [slice(0, draws.x.shape[0])]
    params = [p for p in model.parameters() if p.requires_grad]
    count = count_positions(model)
    packed = draws_logp(model, rollout, draws)
    K, (B, L) = draws.x.shape[0], rollout.ids.shape
    assert count[0] == B * (L + K * 8)
    weights = torch.randn(packed.shape, generator=torch.Generator().manual_seed(2))
    grad_packed = torch.autograd.grad((packed * weights).sum(), params)
    per_step = torch.stack([token_logp(model, rollout, draws.x[j], draws.read[j]) for j in range(K)])
    grad_per_step = torch.autograd.grad((per_step * weights).sum(), params)
    assert torch.equal(packed != 0, draws.read) and torch.equal(per_step != 0, draws.read)
    torch.testing.assert_close(packed, per_step, atol=1e-4, rtol=0)
    for a, b in zip(grad_packed, grad_per_step):
        torch.testing.assert_close(a, b, atol=1e-4 * float(b.abs().max()), rtol=0)
    if scheme == "exact" and variant == "full":
        torch.testing.assert_close(packed.sum((0, 2)), rollout.logp.sum(1), atol=1e-4, rtol=0)


def test_packed_steps_of_a_threshold_rollout():
    """Threshold decoding takes its own number of steps per block and row: packing still gives each
    step's log-probs, and the exact sum is the recorded one."""
    model, tok = block_model()
    prompts = [chat(tok, "2+3"), chat(tok, "Using the numbers [1, 2, 3], make 7.")]
    rollout = sampled(model, tok, prompts, (), unmasking="threshold")
    draws = stepwise_draws(rollout, 0, "exact")
    with torch.no_grad():
        packed = draws_logp(model, rollout, draws)
        per_step = torch.stack([token_logp(model, rollout, draws.x[j], draws.read[j]) for j in range(len(draws.x))])
    torch.testing.assert_close(packed, per_step, atol=1e-4, rtol=0)
    torch.testing.assert_close(packed.sum((0, 2)), rollout.logp.sum(1), atol=1e-4, rtol=0)
    draws.per_pass = 3  # under a memory budget: the same values, a few draws per forward
    with torch.no_grad():
        torch.testing.assert_close(draws_logp(model, rollout, draws), packed, atol=1e-4, rtol=0)


@pytest.mark.parametrize("per_pass", [0, 2])
def test_the_update_on_packed_draws_is_the_update_draw_by_draw(prompts_and_eos, per_pass):
    """accumulate_gradients on a block model runs a micro-batch's draws in one forward and one
    backward (or per_pass draws at a time: two forwards for 3 draws); the loss, metrics and gradient
    are those of the same draws run one by one."""
    prompts, eos = prompts_and_eos
    model, tok = block_model()
    rollout = sampled(model, tok, prompts * 2, eos)
    draws = stepwise_draws(rollout, 3, "low_discrepancy", torch.Generator().manual_seed(0))
    draws.per_pass = per_pass
    old = rollout.logp[None].expand(3, -1, -1) - 0.5 * torch.rand((3, *rollout.logp.shape))  # some ratios clip
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5, 0.0, 2.0])

    def gradient(d):
        model.zero_grad()
        batch = MicroBatch(
            rollout,
            [""] * 6,
            torch.zeros(6),
            torch.zeros(6),
            torch.zeros(6),
            advantages,
            torch.arange(5),
            [d],
            [old],
            None,
        )
        loss, metrics = accumulate_gradients(model, [batch], 0, epsilon=0.2, epsilon_high=0.2, beta=0.0)
        return loss, metrics, [p.grad.clone() for p in model.parameters()]

    one_by_one = dataclasses.replace(draws, blockwise=False)  # a draw that is not blockwise is its own forward
    assert len(draw_passes(model, one_by_one)) == 3 and len(draw_passes(model, draws)) == (2 if per_pass else 1)
    calls = [0]
    model.register_forward_pre_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    (loss_a, metrics_a, grad_a) = gradient(draws)
    assert calls[0] == (2 if per_pass else 1)
    (loss_b, metrics_b, grad_b) = gradient(one_by_one)
    assert metrics_a["clipped_low"] + metrics_a["clipped_high"] > 0 and metrics_a["tokens"] == metrics_b["tokens"]
    assert (
        metrics_a["clipped_low"] == metrics_b["clipped_low"] and metrics_a["clipped_high"] == metrics_b["clipped_high"]
    )
    assert abs(loss_a - loss_b) <= 1e-5 * max(1.0, abs(loss_b))
    for a, b in zip(grad_a, grad_b):
        torch.testing.assert_close(a, b, atol=1e-4 * float(b.abs().max()), rtol=0)


def test_elbo_draws_on_a_block_model_score_each_block_given_the_final_blocks_before_it(prompts_and_eos):
    """The ELBO's masks span every block; on a block model each block is scored given the final
    blocks before it (the block-wise bound), in one forward: equal to running, per draw and block,
    the final sequence with only that block replaced by the draw's. One-step draws stay literal."""
    from likelihood import elbo_draws, one_step_draws

    prompts, eos = prompts_and_eos
    model, tok = block_model()
    rollout = sampled(model, tok, prompts, eos)
    draws = elbo_draws(rollout, 2, torch.Generator().manual_seed(0))
    count = count_positions(model)
    with torch.no_grad():
        packed = draws_logp(model, rollout, draws)
        (B, L), P = rollout.ids.shape, rollout.prompt_length
        block = block_of(rollout.attention_mask, 8)[:, P:]  # each row's blocks, from its first token
        read_blocks = [sum(len(block[r][draws.read[j, r]].unique()) for j in range(2)) for r in range(B)]
        assert count[0] == B * (L + 8 * max(read_blocks))  # one copy of each block a draw reads
        expected = torch.zeros_like(packed)
        for j in range(2):
            for c in block.unique().tolist():
                x, here = rollout.ids.clone(), block == c
                x[:, P:][here] = draws.x[j, :, P:][here]
                expected[j] += token_logp(model, rollout, x, draws.read[j] & here, truncate=False)
        torch.testing.assert_close(packed, expected, atol=1e-4, rtol=0)
        assert not packs(model, one_step_draws(rollout, 1, torch.Generator().manual_seed(0)))


def reference_decode(model, prompt, G, steps_per_block, mask_id, temperature=0.0, generator=None, threshold=None):
    """SDAR's generate.py for one row, written here from its description and run on the model's own
    attention (no mask given: blocks from the first token, positions 0..): the sequence is the prompt
    and masks up to a whole number of blocks of 8; decoding starts at the block holding the prompt's end;
    each block takes up to `steps_per_block` steps, step i committing c_i of its masks (fewer when fewer
    are left, where SDAR's code would overwrite a prompt token), a full forward each step; candidates by
    Gumbel-max over the tempered distribution (argmax at T = 0), confidence softmax(ℓ)[x̂]. With a
    `threshold`, SDAR's low_confidence_dynamic: when at least c_i masked positions are that confident, all of
    them, else the c_i most confident (confidence exactly τ counts as above: SDAR asks for more, a tie has
    probability 0). Returns the completion, each position's step (counted per row, steps that commit nothing
    not counted) and log-prob."""
    b, P = 8, len(prompt)
    total = -(-(P + G) // b) * b
    x = torch.full((1, total), mask_id)
    x[0, :P] = torch.tensor(prompt)
    step, steps, logps = 0, torch.full((total,), -1), torch.zeros(total)
    schedule = [b // steps_per_block + (i < b % steps_per_block) for i in range(steps_per_block)]
    for lo in range(P // b * b, total, b):
        for k in schedule:
            masked = x[0, lo : lo + b] == mask_id
            if not masked.any():
                break
            logits = model(x).logits[0, lo : lo + b].float()
            logits[:, mask_id] = float("-inf")
            lp = (logits / temperature if temperature else logits).log_softmax(-1)
            if temperature:
                u = torch.rand((1, b, lp.shape[-1]), dtype=torch.float64, generator=generator)[0]
                pick = (lp.double() - torch.log(-torch.log(u.clamp_min(torch.finfo(torch.float64).tiny)))).argmax(-1)
            else:
                pick = lp.argmax(-1)
            confidence = logits.double().log_softmax(-1).gather(1, pick[:, None])[:, 0].masked_fill(~masked, -1e300)
            chosen = confidence.topk(min(k, int(masked.sum()))).indices
            if threshold is not None and int((sure := masked & (confidence >= math.log(threshold))).sum()) >= k:
                chosen = sure.nonzero()[:, 0]
            x[0, lo + chosen] = pick[chosen]
            steps[lo + chosen], logps[lo + chosen] = step, lp[chosen, pick[chosen]]
            step += 1
    return x[0, P:], steps[P:], logps[P:]


def prompts_of_every_remainder(tok):
    """Prompts of 8q + r tokens for r = 0..7 (q of 1 or 2), ordinary tokens only."""
    g = torch.Generator().manual_seed(5)
    ordinary = [t for t in range(len(tok)) if t not in (tok.mask_token_id, tok.pad_token_id, *tok.eos_ids)]
    lengths = [8 * (1 + r % 2) + r for r in range(8)]
    return [[ordinary[int(i)] for i in torch.randint(len(ordinary), (n,), generator=g)] for n in lengths]


@pytest.mark.parametrize("steps_per_block", [8, 4])
def test_rollouts_lay_blocks_from_the_first_token_as_the_model_does(steps_per_block):
    """For prompts of every length mod 8, greedy rollouts (cached and not, alone and batched with all the
    other remainders) and seeded ones give the tokens and steps of the start-aligned reference decoder,
    and their recorded log-probs; the last block is decoded whole."""
    model, tok = block_model()
    prompts = prompts_of_every_remainder(tok)
    kw = dict(max_completion_length=16, block_length=8, sampling_steps=2 * steps_per_block, mask_id=tok.mask_token_id)
    kw["pad_id"] = tok.pad_token_id
    with torch.no_grad():
        expected = [reference_decode(model, p, 16, steps_per_block, tok.mask_token_id) for p in prompts]
    for cached in (True, False):
        batch = generate(model, prompts, kv_cache=cached, **kw)
        assert batch.completion.shape[1] == 16 + 7  # the prompt of 8q + 1 tokens decodes 7 + 16 positions
        for i, (p, (tokens, steps, logps)) in enumerate(zip(prompts, expected)):
            alone = generate(model, [p], kv_cache=cached, **kw)
            assert alone.completion.shape[1] == len(tokens) == 16 + (8 - len(p) % 8) % 8
            assert torch.equal(alone.completion[0], tokens) and torch.equal(alone.unmask_step[0], steps)
            torch.testing.assert_close(alone.logp[0], logps, atol=1e-4, rtol=0)
            n = len(tokens)
            assert torch.equal(batch.completion[i, :n], tokens) and torch.equal(batch.unmask_step[i, :n], steps)
            assert bool((batch.completion[i, n:] == tok.pad_token_id).all() and (batch.unmask_step[i, n:] == -1).all())
    for i, p in enumerate(prompts):
        seeded = generate(model, [p], temperature=0.9, generator=torch.Generator().manual_seed(i), **kw)
        with torch.no_grad():
            tokens, steps, logps = reference_decode(
                model, p, 16, steps_per_block, tok.mask_token_id, 0.9, torch.Generator().manual_seed(i)
            )
        assert torch.equal(seeded.completion[0], tokens) and torch.equal(seeded.unmask_step[0], steps)
        torch.testing.assert_close(seeded.logp[0], logps, atol=1e-4, rtol=0)


@pytest.mark.parametrize("steps_per_block", [2, 4, 8])
def test_threshold_rollouts_commit_as_sdar_dynamic_threshold(steps_per_block):
    """Threshold decoding with m = steps_per_block · G/b is SDAR's low_confidence_dynamic with that many
    denoising steps a block: every masked position at least τ confident when there are at least c_i of them,
    else the c_i most confident (at least G/m a step, a block in at most m·b/G steps); greedy (batched and
    alone) and seeded, for prompts of every length mod 8."""
    model, tok = block_model()
    prompts = prompts_of_every_remainder(tok)
    kw = dict(max_completion_length=16, block_length=8, sampling_steps=2 * steps_per_block, mask_id=tok.mask_token_id)
    kw |= dict(pad_id=tok.pad_token_id, unmasking="threshold", threshold=0.3)
    batch = generate(model, prompts, **kw)
    for i, p in enumerate(prompts):
        with torch.no_grad():
            tokens, steps, logps = reference_decode(model, p, 16, steps_per_block, tok.mask_token_id, threshold=0.3)
        n = len(tokens)
        assert torch.equal(batch.completion[i, :n], tokens) and torch.equal(batch.unmask_step[i, :n], steps)
        torch.testing.assert_close(batch.logp[i, :n], logps, atol=1e-4, rtol=0)
        assert int(steps.max()) < 3 * steps_per_block  # the first block, if it holds the prompt's tail, and two more
        seeded = generate(model, [p], temperature=0.9, generator=torch.Generator().manual_seed(i), **kw)
        with torch.no_grad():
            tokens, steps, logps = reference_decode(
                model, p, 16, steps_per_block, tok.mask_token_id, 0.9, torch.Generator().manual_seed(i), 0.3
            )
        assert torch.equal(seeded.completion[0], tokens) and torch.equal(seeded.unmask_step[0], steps)
        torch.testing.assert_close(seeded.logp[0], logps, atol=1e-4, rtol=0)
    assert batch.steps <= 3 * steps_per_block and (batch.passes <= 3 * steps_per_block).all()


def test_mixed_remainders_score_exactly_packed_and_step_by_step():
    """A seeded batch of every remainder with EOS: the recorded log-probs equal the packed exact sum and
    the sum of one forward per step; gradients of the packed sum equal those step by step."""
    model, tok = block_model()
    prompts = prompts_of_every_remainder(tok)
    kw = dict(max_completion_length=16, block_length=8, sampling_steps=8, mask_id=tok.mask_token_id)
    kw |= dict(
        pad_id=tok.pad_token_id, eos_ids=tok.eos_ids, temperature=0.9, generator=torch.Generator().manual_seed(0)
    )
    rollout = generate(model, prompts, **kw)
    draws = stepwise_draws(rollout, 0, "exact")
    params = [p for p in model.parameters() if p.requires_grad]
    packed = draws_logp(model, rollout, draws)
    per_step = torch.stack([token_logp(model, rollout, draws.x[j], draws.read[j]) for j in range(len(draws.x))])
    torch.testing.assert_close(packed, per_step, atol=1e-4, rtol=0)
    torch.testing.assert_close(packed.sum((0, 2)), rollout.logp.sum(1), atol=1e-4, rtol=0)
    for a, b in zip(torch.autograd.grad(packed.sum(), params), torch.autograd.grad(per_step.sum(), params)):
        torch.testing.assert_close(a, b, atol=1e-4 * float(b.abs().max()), rtol=0)


@pytest.mark.parametrize("temperature", [0.0, 0.9])
@pytest.mark.parametrize("stop", ["eos", "none"])
def test_cached_threshold_decoding_is_the_uncached_one(temperature, stop):
    """Threshold decoding over the KV cache, each row at its own pace (every remainder, EOS ending rows
    early): the same tokens, steps, forward passes and log-probs as recomputing the canvas every step, at
    fewer than a third of the positions."""
    model, tok = block_model()
    prompts = prompts_of_every_remainder(tok)
    count = count_positions(model)
    kw = dict(max_completion_length=32, block_length=8, sampling_steps=32, mask_id=tok.mask_token_id)
    kw |= dict(pad_id=tok.pad_token_id, eos_ids=tok.eos_ids if stop == "eos" else (), unmasking="threshold")
    kw["threshold"] = 0.7
    runs = {}
    for cached in (True, False):
        count[0] = 0
        runs[cached] = generate(
            model, prompts, temperature=temperature, generator=torch.Generator().manual_seed(3), kv_cache=cached, **kw
        )
        runs[cached].positions = count[0]
    cached, full = runs[True], runs[False]
    assert torch.equal(cached.ids, full.ids) and torch.equal(cached.unmask_step, full.unmask_step)
    assert torch.equal(cached.passes, full.passes) and cached.passes.min() < cached.passes.max()  # own paces
    assert cached.steps == full.steps
    torch.testing.assert_close(cached.logp, full.logp, atol=1e-4, rtol=0)
    assert 3 * cached.positions < full.positions
