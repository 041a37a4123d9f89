"""Foundation: the sampler follows LLaDA's schedule and its recorded trajectory replays exactly."""

import types

import pytest
import torch
from conftest import chat, host_reads

from sample import UNMASKING, check_settings, generate, policy_logprobs, transfer_schedule

PROMPTS = ["2+3", "Using the numbers [1, 2, 3], make 7.", "hello there, a longer prompt"]


def run(model, tok, prompts=PROMPTS, **kw):
    args = dict(
        max_completion_length=24,
        block_length=8,
        sampling_steps=12,
        mask_id=tok.mask_token_id,
        eos_ids=tok.eos_ids,
        pad_id=tok.pad_token_id,
    )
    args.update(kw)
    return generate(model, [chat(tok, p) for p in prompts], **args)


def test_schedule_formula():
    assert transfer_schedule(8, 3) == [3, 3, 2]
    assert transfer_schedule(12, 12) == [1] * 12
    assert sum(transfer_schedule(32, 5)) == 32


@pytest.mark.parametrize("unmasking", [u for u in UNMASKING if u != "threshold"])  # the fixed-step ones
def test_schedule_followed_at_t0(tiny, unmasking):
    model, tok = tiny
    gen, block, steps = 24, 8, 9  # 3 steps per block: k = [3, 3, 2]
    r = run(
        model, tok, max_completion_length=gen, block_length=block, sampling_steps=steps, unmasking=unmasking, eos_ids=()
    )
    again = run(
        model, tok, max_completion_length=gen, block_length=block, sampling_steps=steps, unmasking=unmasking, eos_ids=()
    )
    if unmasking == "low_confidence":
        assert torch.equal(r.ids, again.ids) and torch.equal(r.unmask_step, again.unmask_step)  # deterministic
    assert (r.completion != tok.mask_token_id).all()  # every position committed, never to [MASK]
    spb, k = steps // (gen // block), transfer_schedule(block, steps // (gen // block))
    for row in r.unmask_step:
        counts = torch.bincount(row, minlength=steps)
        for b in range(gen // block):
            blk = row[b * block : (b + 1) * block]
            assert ((blk >= b * spb) & (blk < (b + 1) * spb)).all()  # blocks strictly left to right
            assert counts[b * spb : (b + 1) * spb].tolist() == k  # exactly c_i tokens at step i
    assert torch.equal(
        r.ids[:, : r.prompt_length],
        run(model, tok, max_completion_length=8, block_length=8, sampling_steps=8).ids[:, : r.prompt_length],
    )


def rebuild(r, t):
    """x_t: completion positions committed at step >= t are masked again."""
    x = r.ids.clone()
    x[:, r.prompt_length :][r.unmask_step >= t] = r.mask_id
    return x


@pytest.mark.parametrize(
    "unmasking,temperature,top_k,top_p",
    [
        ("low_confidence", 0.0, None, None),
        ("low_confidence", 0.8, 20, 0.9),
        ("random", 1.0, None, None),
        ("random", 0.6, 50, 0.95),
    ],
)
def test_recorded_logp_replays(tiny, unmasking, temperature, top_k, top_p):
    """log p(o_j | x_t) from a fresh forward on the rebuilt x_t equals the recorded value, every step."""
    model, tok = tiny
    g = torch.Generator().manual_seed(1)
    r = run(model, tok, unmasking=unmasking, temperature=temperature, top_k=top_k, top_p=top_p, generator=g)
    for t in range(r.steps):
        at_t = r.unmask_step == t
        assert at_t.any(1).all()  # every row commits at every step (no EOS with this seed)
        logits = model(rebuild(r, t), attention_mask=r.attention_mask).logits[:, r.prompt_length :]
        lp = policy_logprobs(logits, mask_id=r.mask_id, temperature=temperature, top_k=top_k, top_p=top_p)
        replay = lp.gather(-1, r.completion[..., None]).squeeze(-1)
        torch.testing.assert_close(replay[at_t], r.logp[at_t], atol=1e-5, rtol=1e-5)
        ent = -(lp.exp() * lp.nan_to_num(neginf=0.0)).sum(-1)
        torch.testing.assert_close(ent[at_t], r.entropy[at_t], atol=1e-5, rtol=1e-5)
    assert (r.logp <= 0).all() and torch.isfinite(r.logp).all()


def test_padding_invariance(tiny):
    model, tok = tiny
    batch = run(model, tok)
    for i, p in enumerate(PROMPTS):
        alone = run(model, tok, prompts=[p])
        assert torch.equal(alone.completion[0], batch.completion[i])
        assert torch.equal(alone.unmask_step[0], batch.unmask_step[i])
        torch.testing.assert_close(alone.logp[0], batch.logp[i], atol=1e-5, rtol=1e-5)


def test_seeded_sampling_reproducible(tiny):
    model, tok = tiny
    a = run(model, tok, temperature=1.0, unmasking="random", generator=torch.Generator().manual_seed(3))
    b = run(model, tok, temperature=1.0, unmasking="random", generator=torch.Generator().manual_seed(3))
    c = run(model, tok, temperature=1.0, unmasking="random", generator=torch.Generator().manual_seed(4))
    assert torch.equal(a.ids, b.ids) and not torch.equal(a.ids, c.ids)


@pytest.mark.parametrize(
    "kw,name",
    [
        (dict(block_length=7), "block_length"),
        (dict(sampling_steps=4), "sampling_steps"),  # 3 blocks
        (dict(sampling_steps=48), "sampling_steps"),  # 16 steps per block of 8
        (dict(temperature=-0.1), "temperature"),
        (dict(unmasking="top_prob"), "unmasking"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_k=0), "top_k"),
    ],
)
def test_bad_settings_raise(tiny, kw, name):
    model, tok = tiny
    with pytest.raises(ValueError, match=name):
        run(model, tok, **kw)
    args = dict(max_completion_length=24, block_length=8, sampling_steps=12) | kw
    with pytest.raises(ValueError, match=name):
        check_settings(**args)


class Scripted(torch.nn.Module):
    """Logits fixed by position: token `a` before completion offset `eos_at`, EOS from there on. In the
    LLaDA family's layout (model.transformer["ln_f"] before an identity head), so positions select."""

    def __init__(self, vocab, prompt_len, a, eos, eos_at):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.vocab, self.P, self.a, self.eos, self.eos_at = vocab, prompt_len, a, eos, eos_at
        self.calls = 0
        self.config = types.SimpleNamespace(model_type="tiny_llada")
        self.model = torch.nn.Module()
        self.model.transformer = torch.nn.ModuleDict({"ln_f": torch.nn.Identity()})

    def forward(self, ids, attention_mask=None):
        self.calls += 1
        logits = torch.zeros(*ids.shape, self.vocab)
        pos = torch.arange(ids.shape[1])
        logits[:, pos < self.P + self.eos_at, self.a] = 5.0
        logits[:, pos >= self.P + self.eos_at, self.eos] = 5.0
        logits[..., 1] = 50.0  # a huge mask logit: must never be sampled
        return types.SimpleNamespace(logits=self.model.transformer["ln_f"](logits))


def test_eos_rows_stop_and_fill(tiny):
    _, tok = tiny
    prompt = [5, 6, 7]
    model = Scripted(len(tok), len(prompt), a=60, eos=tok.eos_token_id, eos_at=5)
    kw = dict(
        max_completion_length=32, block_length=8, sampling_steps=16, mask_id=tok.mask_token_id, eos_ids=tok.eos_ids
    )
    full = generate(model, [prompt], **(kw | {"eos_ids": ()}))
    calls_full = model.calls
    model.calls = 0
    short = generate(model, [prompt], **kw)
    assert model.calls == 4 < calls_full == 16  # only block 0 is computed
    assert torch.equal(full.ids, short.ids)  # same tokens: the filled EOS is what the model gives
    assert short.completion[0, :5].eq(60).all() and short.completion[0, 5:].eq(tok.eos_token_id).all()
    assert (short.logp[0, 8:] == 0).all() and (short.unmask_step[0, 8:] >= 4).all()
    assert sorted(short.unmask_step[0, 8:16].tolist()) == sorted(full.unmask_step[0, 8:16].tolist())


@pytest.mark.parametrize("steps", [24, 12, 6])
def test_threshold_above_one_is_low_confidence_at_its_steps(tiny, steps):
    """At temperature 0 with τ > 1 no position passes the threshold, so each step commits its c_i most
    confident: token for token, low-confidence decoding at the same sampling_steps (one a step at m = G)."""
    model, tok = tiny
    low = run(model, tok, sampling_steps=steps, unmasking="low_confidence")
    thr = run(model, tok, sampling_steps=steps, unmasking="threshold", threshold=1.5)
    assert torch.equal(thr.ids, low.ids) and torch.equal(thr.unmask_step, low.unmask_step)
    torch.testing.assert_close(thr.logp, low.logp, atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def peaked():
    """A random model with a larger init: peaked, uneven confidences, so a threshold commits a
    varying number of positions per step (the plain random model is flat: one per step)."""
    from plumbing.model import load

    model, tok = load("tiny", seed=0, tiny_overrides=dict(init_std=0.3))
    return model.eval(), tok


def threshold_rollout(model, tok, prompts=PROMPTS, threshold=0.3, **kw):
    return run(
        model,
        tok,
        prompts,
        unmasking="threshold",
        threshold=threshold,
        temperature=1.0,
        top_k=40,
        generator=torch.Generator().manual_seed(5),
        **kw,
    )


def test_threshold_rows_take_their_own_steps_and_replay(peaked):
    """Each row advances on its own, so rows end with different step counts m'; every position is
    committed once, blocks left to right; the recorded log-probs equal a fresh forward on every
    rebuilt x_t of the row's own steps (the trajectory is an exact policy)."""
    model, tok = peaked
    r = threshold_rollout(model, tok, eos_ids=())
    steps = r.unmask_step.max(1).values + 1
    assert (
        len(set(steps.tolist())) > 1 and int(steps.max()) == r.steps and int(steps.max()) < 24
    )  # fewer passes than tokens
    for row in r.unmask_step:
        assert sorted(set(row.tolist())) == list(range(int(row.max()) + 1))  # every step commits something
        blocks = row.view(3, 8)
        assert (blocks[1:].min(1).values > blocks[:-1].max(1).values).all()  # blocks strictly left to right
    for t in range(r.steps):
        at_t = r.unmask_step == t
        logits = model(rebuild(r, t), attention_mask=r.attention_mask).logits[:, r.prompt_length :]
        lp = policy_logprobs(logits, mask_id=r.mask_id, temperature=1.0, top_k=40)
        replay = lp.gather(-1, r.completion[..., None]).squeeze(-1)
        torch.testing.assert_close(replay[at_t], r.logp[at_t], atol=1e-5, rtol=1e-5)


def test_threshold_padding_invariance_and_bad_threshold(peaked):
    model, tok = peaked
    batch = run(model, tok, unmasking="threshold", threshold=0.3)
    assert len(set((batch.unmask_step.max(1).values + 1).tolist())) > 1
    for i, p in enumerate(PROMPTS):
        alone = run(model, tok, prompts=[p], unmasking="threshold", threshold=0.3)
        assert torch.equal(alone.completion[0], batch.completion[i]) and torch.equal(
            alone.unmask_step[0], batch.unmask_step[i]
        )
    for bad in (0, -0.5, None, "high"):
        with pytest.raises(ValueError, match="threshold"):
            run(model, tok, unmasking="threshold", threshold=bad)


# once a rollout: its layout (with its width), its blocks and padding, a block that no row decodes, its steps
# (threshold)
ROLLOUT_READS = 4


@pytest.mark.parametrize("folder", ["models/tiny-countdown", "models/tiny-countdown-block"])
@pytest.mark.parametrize("unmasking", UNMASKING)
def test_a_rollout_step_reads_the_host_at_most_once(folder, unmasking):
    """On a GPU a read of a tensor to the host waits for the device's queue to drain: between two sampling forwards
    of a rollout at most one read (which rows decode and how many positions each commits), and ROLLOUT_READS
    once a rollout (reads: item, bool, int, float, tolist, nonzero, indexing by a mask; tests/conftest.py). The
    embedded model and its block-model twin (KV cache), padded prompts, rows that end in different blocks."""
    from plumbing import data
    from plumbing.model import load

    model, tok = load(folder)
    model.eval()
    events = []

    def sampling(module, args, kwargs):
        if not kwargs.get("store_kv"):  # the KV cache's own passes sample nothing
            events.append("forward")

    model.register_forward_pre_hook(sampling, with_kwargs=True)
    items = data.load_items("countdown", "test", n=16, seed=0)  # held-out problems: prompts of several lengths
    prompts = [data.build_prompt(tok, "countdown", item, compact=True) for item in items]
    how = dict(threshold=0.9) if unmasking == "threshold" else {}
    b = 8 if "block" in folder else 4  # the block model's own size; short blocks: rows end in different ones
    kw = dict(max_completion_length=32, block_length=b, sampling_steps=64 // b, temperature=0.7, unmasking=unmasking)
    special = dict(mask_id=tok.mask_token_id, eos_ids=tok.eos_ids, pad_id=tok.pad_token_id)
    with host_reads(events):
        rollout = generate(model, prompts, **kw, **how, **special, generator=torch.Generator().manual_seed(0))
    gaps = " ".join(events).split("forward")  # the reads before the first sampling forward, between two, after the last
    first, *between, last = [len(gap.split()) for gap in gaps]
    assert len(between) >= 3 and max(between) <= 1, between
    assert first - 1 + last <= ROLLOUT_READS, (first, last)  # the first step's own read comes before its forward
    assert len(set(rollout.passes.tolist())) > 1  # rows that end in different blocks


def test_the_padding_given_on_the_host_gives_the_logits_read_from_the_device(tiny):
    """forward_logits(padding=), the rows' padding read once a rollout, takes the path the padding read from the
    device takes: on a model run with its padding cut off (a forward per padding length) and on one that masks it."""
    from plumbing.data import left_pad
    from plumbing.logits import forward_logits

    model, tok = tiny
    ids, attn = left_pad([chat(tok, p) for p in [*PROMPTS, PROMPTS[0], "9 9 -> 81"]], tok.pad_token_id)
    padding, at = (attn == 0).sum(1).tolist(), (slice(None), slice(ids.shape[1] - 4, None))
    assert len(set(padding)) > 2
    honours = model.honours_padding_mask
    try:
        for model.honours_padding_mask in (False, True):
            given = forward_logits(model, ids, attn, at=at, padding=padding)
            assert torch.equal(given, forward_logits(model, ids, attn, at=at))
    finally:
        model.honours_padding_mask = honours
