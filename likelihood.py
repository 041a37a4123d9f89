"""log π_θ(o) of a sampled completion: AGRPO's stepwise estimator and the ablations (ALGORITHM.md §2 and §3,
which say why the first is unbiased and the others are not).

Stepwise: with f(t) = Σ_{j∈S_t} log p_θ(o_j | x_t) under the sampling distribution and m' one plus the last
step that committed a non-EOS token, log π_θ(o) = Σ_{t<m'} f(t), estimated from k drawn steps:

    uniform, low-discrepancy:  Σ_j (m'/k) f(t_j),        t_j = ⌊u_j m'⌋ (u stratified over the batch's B·k draws)
    entropy (importance):      Σ_j f(t_j) / (k q(t_j)),  q(t) ∝ Σ_{j∈S_t} H_j, mixed with uniform
    exact:                     Σ_{t<m'} f(t)

ELBO: (G/l) Σ_{masked j} log p_θ(o_j | x_l), l ~ U{1..G}. One-step: Σ_j log p_θ(o_j | prompt', all MASK).
Every estimator returns `Draws` (masked inputs, the positions each draw reads, a weight per draw, a per-row
normaliser), so one loss runs on all three and the current, old and reference policies see the same draws.
Randomness comes only from an explicit torch.Generator.
"""

from dataclasses import dataclass

import torch

import blocks
from plumbing.families import block_size, family_of
from plumbing.logits import forward_logits, selected_logits
from sample import policy_logprobs

ESTIMATORS = ("stepwise", "elbo", "one_step")
UNIFORM_MIX = 0.05  # entropy sampling: the share of the uniform distribution in the proposal q(t) (§2)
PROMPT_MASK_PROB = 0.15  # one-step: each prompt token masked with this probability, as diffu-GRPO


@dataclass
class Draws:
    x: torch.Tensor  # (K, B, L) masked inputs, one per draw and row
    read: torch.Tensor  # (K, B, G) bool: completion positions this draw scores
    # (K, B): Σ_k weight · Σ_read log p is the estimator's value: log π(o) unbiased (stepwise), LLaDA's bound
    # (elbo), the mean-field Σ_j log p(o_j | prompt', all MASK) (one_step), neither of them log π(o) (§3)
    weight: torch.Tensor
    norm: torch.Tensor  # (B,) per-row normaliser of the loss (steps m' or completion length)
    # apply the rollout's top-k/top-p: only in the context x_t a token was sampled in; elsewhere
    # (ELBO, one-step) it may fall outside the truncation and get log p = -inf
    truncate: bool = True
    # on a block-diffusion model, score each block read given the final blocks before it (blocks.py):
    # exactly x_t's output for a stepwise draw, the block-wise ELBO for an ELBO draw
    blockwise: bool = True
    per_pass: int = 0  # packed draws: the most that one forward scores (0: all); fewer hold less memory


def completion_mask(rollout):
    """(B, G) bool: the tokens through the first EOS (the text a reward reads, then that EOS)."""
    is_eos = rollout.is_eos.long()
    before = is_eos.cumsum(1) - is_eos  # EOS tokens strictly before each position
    return before == 0


def steps_used(rollout):
    """m' per row: 1 + the last step that committed a non-EOS token (at least 1, so an all-EOS
    completion still has its first step scored)."""
    steps = rollout.unmask_step.masked_fill(rollout.is_eos, -1)
    return (steps.max(1).values + 1).clamp(min=1)


def step_entropy(rollout):
    """(B, m) Σ_{j∈S_t} H_j: the entropy of each step's action, from the rollout."""
    B = rollout.ids.shape[0]
    H = torch.zeros(B, rollout.steps, device=rollout.ids.device)
    return H.scatter_add(1, rollout.unmask_step.clamp(min=0), rollout.entropy.float())


def _uniforms(shape, generator, stratified):
    """u ~ U(0,1) of `shape`; stratified: one draw in each of the numel strata, randomly placed."""
    n = int(torch.tensor(shape).prod())
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    if stratified:
        u = (torch.randperm(n, generator=generator).double() + u) / n
    return u.view(shape)


# Each scheme draws k steps t_j < m' per row and weights w_j with E[Σ_j w_j f(t_j)] = Σ_{t<m'} f(t) for any f:
# (rollout, m' per row (B,) on the CPU, k, generator) -> steps (B, K) long, weights (B, K), on the CPU.


def exact_steps(rollout, used, k, generator):
    """Every step t < m' once with weight 1: the sum itself (K = max m'; a shorter row's padding weighs 0)."""
    steps = torch.arange(int(used.max())).expand(len(used), -1)
    return steps, (steps < used[:, None]).double()


def uniform_steps(rollout, used, k, generator):
    """t_j = ⌊u_j m'⌋ with u_j ~ U(0, 1) independent: each step has probability 1/m', so w_j = m'/k."""
    return _scaled(_uniforms((len(used), k), generator, stratified=False), used, k)


def low_discrepancy_steps(rollout, used, k, generator):
    """As uniform, with the u_j stratified over the batch's B·k draws: each still U(0, 1), less variance."""
    return _scaled(_uniforms((len(used), k), generator, stratified=True), used, k)


def entropy_steps(rollout, used, k, generator):
    """Importance sampling: t_j ~ q(t) ∝ Σ_{i∈S_t} H_i mixed with uniform, w_j = 1 / (k q(t_j)); the u_j
    stratified as low-discrepancy's. A row whose steps all have zero entropy draws uniformly."""
    valid = torch.arange(rollout.steps)[None] < used[:, None]
    H = step_entropy(rollout).cpu().double() * valid
    # mixing in a little uniform keeps q(t) > 0 on zero-entropy steps, which unbiasedness needs
    q = (1 - UNIFORM_MIX) * H / H.sum(1, keepdim=True).clamp(min=1e-12) + UNIFORM_MIX * valid / used[:, None]
    q = torch.where(H.sum(1, keepdim=True) > 0, q, valid / used[:, None].double())
    cdf = q.cumsum(1)
    u = _uniforms((len(used), k), generator, stratified=True)
    steps = torch.searchsorted(cdf, u * cdf[:, -1:]).clamp(max=used[:, None] - 1)
    return steps, 1.0 / (k * q.gather(1, steps))


def _scaled(u, used, k):
    """Steps ⌊u m'⌋ (each of the m' with probability 1/m' for u ~ U(0, 1)) and their weight m'/k."""
    steps = (u * used[:, None]).long().clamp(max=used[:, None] - 1)
    return steps, (used[:, None] / k).double().expand_as(steps)


SCHEMES = {  # --scheme: the name of each way to draw the steps
    "exact": exact_steps,
    "uniform": uniform_steps,
    "low_discrepancy": low_discrepancy_steps,
    "entropy": entropy_steps,
}


def sample_steps(rollout, k, scheme="low_discrepancy", generator=None):
    """Steps (B, K) and weights (B, K) with E[Σ_j w_j f(t_j)] = Σ_{t<m'} f(t) for any f, by SCHEMES[scheme]
    (`exact`: every step t < m' with weight 1, K = max m'), on the rollout's device."""
    if scheme not in SCHEMES:
        raise ValueError(f"step sampling scheme={scheme!r} must be one of {tuple(SCHEMES)}")
    if k < 1 and scheme != "exact":
        raise ValueError(f"k={k} Monte Carlo steps must be at least 1")
    steps, weights = SCHEMES[scheme](rollout, steps_used(rollout).cpu(), k, generator)
    return steps.to(rollout.ids.device), weights.float().to(rollout.ids.device)


def rebuild_state(rollout, steps):
    """x_t for every row and each column of steps (B, K) -> (K, B, L)."""
    P = rollout.prompt_length
    x = rollout.ids[None].repeat(steps.shape[1], 1, 1)
    remask = rollout.unmask_step[None] >= steps.T[:, :, None]  # (K, B, G)
    x[:, :, P:] = x[:, :, P:].masked_fill(remask, rollout.mask_id)
    return x


def stepwise_draws(rollout, k, scheme="low_discrepancy", generator=None):
    """AGRPO's draws: k steps t_j of each row's trajectory by `scheme`, each draw the rebuilt state x_{t_j}
    reading the tokens committed at t_j (S_{t_j}), weighted w_j, so Σ_j w_j f(t_j) estimates log π_θ(o) without
    bias; the normaliser is m' (the steps the row used)."""
    steps, weights = sample_steps(rollout, k, scheme, generator)
    # zero-weight draws (padding of `exact`) read nothing: their positions may hold EOS fill, -inf under top-k
    read = (rollout.unmask_step[None] == steps.T[:, :, None]) & (weights.T > 0)[..., None]
    return Draws(rebuild_state(rollout, steps), read, weights.T.contiguous(), steps_used(rollout).float())


def elbo_draws(rollout, k, generator=None):
    """LLaDA's ELBO with l stratified over the B·k draws of the batch (VRPO-style variance cut):
    mask l ~ U{1..G} of the G completion positions and score every masked one, EOS padding
    included, as LLaDA's own likelihood does: the G/l weight counts all G positions, so all of
    them are read. Averaged over the k draws; the normaliser is G, the tokens scored in expectation."""
    B, G = rollout.unmask_step.shape
    u = _uniforms((k, B), generator, stratified=True)
    n_masked = (1 + (u * G).long()).clamp(max=G)  # l ∈ {1..G}
    scores = torch.rand((k, B, G), generator=generator).argsort(-1).argsort(-1)  # a random rank per position
    masked = (scores < n_masked[..., None]).to(rollout.ids.device)
    x = rollout.ids[None].repeat(k, 1, 1)
    x[:, :, rollout.prompt_length :] = x[:, :, rollout.prompt_length :].masked_fill(masked, rollout.mask_id)
    weight = (G / (k * n_masked.float())).to(rollout.ids.device)
    return Draws(x, masked, weight, torch.full((B,), float(G), device=x.device), truncate=False)


def one_step_draws(rollout, k, generator=None):
    """diffu-GRPO: completion all [MASK], each real prompt token masked with probability PROMPT_MASK_PROB."""
    B, L = rollout.ids.shape
    P = rollout.prompt_length
    x = rollout.ids[None].repeat(k, 1, 1)
    x[:, :, P:] = rollout.mask_id
    hide = (torch.rand((k, B, P), generator=generator) < PROMPT_MASK_PROB).to(x.device) & rollout.attention_mask[
        None, :, :P
    ].bool()
    x[:, :, :P] = x[:, :, :P].masked_fill(hide, rollout.mask_id)
    keep = completion_mask(rollout)
    return Draws(
        x,
        keep[None].expand(k, -1, -1),
        torch.full((k, B), 1.0 / k, device=x.device),
        keep.sum(1).float(),
        truncate=False,
        blockwise=False,  # its masked prompt is part of what it conditions on
    )


def make_draws(estimator, rollout, k, generator=None, scheme="low_discrepancy"):
    """The k draws per row of `estimator` (ESTIMATORS): stepwise (AGRPO's, by `scheme`), elbo or one_step. One
    loss reads them all; only the stepwise draws estimate log π_θ(o)."""
    if estimator == "stepwise":
        return stepwise_draws(rollout, k, scheme, generator)
    if estimator == "elbo":
        return elbo_draws(rollout, k, generator)
    if estimator == "one_step":
        return one_step_draws(rollout, k, generator)
    raise ValueError(f"estimator={estimator!r} must be one of {ESTIMATORS}")


def token_logp(model, rollout, x, read, rows=None, *, truncate=True):
    """log p_θ(o_j | x) at the read positions, zero elsewhere: (n, G). x (n, L), read (n, G);
    rows (n,) picks each input's rollout row (default: all rows in order). Only read positions get
    logits (the vocabulary projection and log-softmax), never the whole (n, L, V)."""
    rows = torch.arange(x.shape[0], device=x.device) if rows is None else rows
    at = torch.zeros(x.shape, dtype=torch.bool, device=x.device)
    at[:, rollout.prompt_length :] = read
    logits = forward_logits(model, x, rollout.attention_mask[rows], at=at)  # (N, V), N = read.sum()
    top_k, top_p = (rollout.top_k, rollout.top_p) if truncate else (None, None)
    tokens = rollout.completion[rows][read]
    lp = policy_logprobs(
        logits, mask_id=rollout.mask_id, temperature=rollout.temperature, top_k=top_k, top_p=top_p, keep=tokens
    )
    out = torch.zeros(read.shape, dtype=lp.dtype, device=lp.device)
    return out.masked_scatter(read, lp.gather(-1, tokens[:, None]).squeeze(-1))


def packs(model, draws):
    """Whether a row's draws share one forward: blockwise draws on a block-diffusion model whose
    position i predicts token i (blocks.py). Otherwise each draw is its own forward input."""
    return draws.blockwise and block_size(model) > 0 and family_of(model).shift == 0


def spans(n, size):
    """range(n) as consecutive slices of `size` (the last may be shorter)."""
    return [slice(j, min(j + size, n)) for j in range(0, n, size)]


def draw_passes(model, draws):
    """The draws, as slices, that one forward pass computes: all of them (or `per_pass` at a time) when
    they pack, else one each (one forward pass of memory under backward, whatever k is)."""
    K = draws.x.shape[0]
    return spans(K, (draws.per_pass or K) if packs(model, draws) else 1)


def draws_logp(model, rollout, draws, js=slice(None), rows=None, *, chunk=64):
    """Token log-probs of the draws `js` for `rows` (default all), (K, n, G). Packed draws of a row
    run in one forward; other draws as many (row, draw) pairs per forward pass as `chunk`. Runs
    under whatever grad mode the caller set."""
    rows = torch.arange(draws.x.shape[1], device=draws.x.device) if rows is None else rows
    x, read = draws.x[js][:, rows], draws.read[js][:, rows]
    if packs(model, draws):
        parts = spans(len(x), draws.per_pass or len(x))
        return torch.cat([packed_logp(model, rollout, x[s], read[s], rows, truncate=draws.truncate) for s in parts])
    K, n, L = x.shape
    x, read, rows = x.reshape(K * n, L), read.reshape(K * n, -1), rows.repeat(K)
    parts = [token_logp(model, rollout, x[s], read[s], rows[s], truncate=draws.truncate) for s in spans(K * n, chunk)]
    return torch.cat(parts).view(K, n, -1)


def packed_logp(model, rollout, x, read, rows, *, truncate=True):
    """log p_θ(o_j | ·) of draws on a block-diffusion model, all of a row's in one forward: the final
    sequence and one copy of each block a draw reads (blocks.py). x (K, n, L), read (K, n, G) ->
    (K, n, G), zero where not read."""
    P, ids = rollout.prompt_length, rollout.ids[rows]
    packed, call, copy_read, columns, draw = blocks.packed_states(
        ids, rollout.attention_mask[rows], x, read, prompt_length=P, size=block_size(model)
    )
    at = torch.zeros(packed.shape, dtype=torch.bool, device=packed.device)
    at[:, ids.shape[1] :] = copy_read.flatten(1)
    logits = selected_logits(model, packed, call, at)  # (N, V), row by row, copy by copy
    tokens = ids.gather(1, columns.flatten(1)).view(copy_read.shape)[copy_read]
    top_k, top_p = (rollout.top_k, rollout.top_p) if truncate else (None, None)
    lp = policy_logprobs(
        logits, mask_id=rollout.mask_id, temperature=rollout.temperature, top_k=top_k, top_p=top_p, keep=tokens
    )
    row = torch.arange(len(rows), device=packed.device)[:, None, None].expand(copy_read.shape)
    where = (draw[..., None].expand(copy_read.shape)[copy_read], row[copy_read], (columns - P)[copy_read])
    out = torch.zeros(read.shape, dtype=lp.dtype, device=lp.device)
    return out.index_put(where, lp.gather(-1, tokens[:, None]).squeeze(-1))


def sequence_logp(model, rollout, draws, chunk=64):
    """The estimator's value per row, Σ_k weight_k Σ_{read} log p (B,): log π(o) for stepwise draws (Draws.weight)."""
    return (draws.weight[..., None] * draws_logp(model, rollout, draws, chunk=chunk)).sum((0, 2))


def exact_logp(model, rollout, chunk=64):
    """Σ_{t<m'} f(t), every step of every row: the quantity the stepwise draws estimate. The steps are
    batched over rows (`chunk` inputs a forward); on a block model each row's steps are packed into one."""
    return sequence_logp(model, rollout, stepwise_draws(rollout, 0, "exact"), chunk)
