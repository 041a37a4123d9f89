"""LLaDA's semi-autoregressive sampler, recording the trajectory that AGRPO's policy is defined on
(ALGORITHM.md §1).

x = [prompt ; G × MASK]; the G positions form G/B blocks filled left to right, s = steps·B/G steps
per block. Step i of a block with m masked positions commits

    k_i = floor(m / s) + [i < m mod s]

tokens: one forward pass gives logits ℓ (mask logit := −∞), candidates x̂ = argmax(ℓ/T + Gumbel)
(Gumbel noise in float64; argmax ℓ at T = 0), confidence c = softmax(ℓ)[x̂] (`low_confidence`) or
c ~ U(0,1) (`random`), c = −∞ outside the block and on committed positions; the k_i highest-c
positions take x̂.

Each unmasking step t is one action of the policy (the paper's MDP): with S_t the positions
committed at step t and x_t the state before it,

    log π_θ(o) = Σ_t log π_θ(o_{S_t} | x_t),    log π_θ(o_{S_t} | x_t) = Σ_{j∈S_t} log p_θ(o_j | x_t).

So per completion token we record `unmask_step` (t), `logp` (log p(o_j | x_t) under the sampling
distribution: mask removed, temperature, top-k, top-p) and that distribution's `entropy`. At
T = 0 (greedy) `logp` and `entropy` are those of the temperature-1 distribution.
"""

import math
from dataclasses import dataclass

import torch

import blocks
from families import block_size
from logits import forward_logits, selected_logits

UNMASKING = ("low_confidence", "random", "threshold")


@dataclass
class Rollout:
    ids: torch.Tensor  # (B, P+G) prompt (left-padded) and completion
    attention_mask: torch.Tensor  # (B, P+G) 0 on prompt padding
    prompt_length: int  # P, padded prompt length
    unmask_step: torch.Tensor  # (B, G) global step that committed each completion token
    logp: torch.Tensor  # (B, G) log-prob of the committed token at its step
    entropy: torch.Tensor  # (B, G) entropy of the sampling distribution there
    steps: int  # m, total sampling steps
    mask_id: int
    eos_ids: tuple
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    passes: torch.Tensor | None = None  # (B,) forward passes each row took (threshold decoding: its own m')

    @property
    def completion(self):
        return self.ids[:, self.prompt_length :]

    @property
    def is_eos(self):
        """(B, G) bool: the completion tokens that end a completion."""
        return torch.isin(self.completion, torch.tensor(self.eos_ids, device=self.ids.device))


def check_settings(
    max_completion_length,
    block_length,
    sampling_steps,
    temperature=0.0,
    unmasking="low_confidence",
    top_k=None,
    top_p=None,
    threshold=None,
):
    """Raise ValueError naming the first invalid setting (also used by train/eval before heavy work).
    Threshold decoding takes its own number of steps, so `sampling_steps` is not checked for it."""
    L, steps = max_completion_length, sampling_steps
    if L < 1:
        raise ValueError(f"max_completion_length={L} must be at least 1")
    if block_length < 1 or L % block_length:
        raise ValueError(f"block_length={block_length} must divide max_completion_length={L}")
    n_blocks = L // block_length
    if unmasking == "threshold":
        if not (isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and 0 < threshold < math.inf):
            raise ValueError(
                f"threshold={threshold!r} must be a finite number > 0: the confidence that commits a position (>1: "
                "one a step)"
            )
    else:
        if steps < 1 or steps % n_blocks:
            raise ValueError(
                f"sampling_steps={steps} must be a positive multiple of the number of blocks ({n_blocks} = "
                "max_completion_length/block_length)"
            )
        if steps // n_blocks > block_length:
            raise ValueError(
                f"sampling_steps={steps} gives {steps // n_blocks} steps per block but a block has only "
                f"block_length={block_length} tokens"
            )
    if not temperature >= 0:
        raise ValueError(f"temperature={temperature} must be >= 0")
    if unmasking not in UNMASKING:
        raise ValueError(f"unmasking={unmasking!r} must be one of {UNMASKING}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k={top_k} must be >= 1 or None")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p} must be in (0, 1] or None")


def policy_logprobs(logits, mask_id, temperature=0.0, top_k=None, top_p=None, keep=None):
    """log π(· | x_t) per position: the sampling distribution. Shared by sampler and likelihood so
    the two can never disagree. logits (..., V), any dtype; returns float32 log-probs.

    keep (...,): token ids that top-k/top-p never remove. The likelihood passes the sampled tokens:
    the truncation is recomputed from the current logits, and a token the rollout sampled at the
    edge of the set could otherwise fall out of it (bf16 noise between the rollout and the training
    pass, or an update) and get log p = −inf, ratio 0 and no gradient. With unchanged weights the
    set is the rollout's, which held the token anyway, so nothing changes there."""
    logits = logits.float()
    logits[..., mask_id] = float("-inf")  # a committed position must never hold [MASK]
    if temperature > 0:
        logits = logits / temperature
    protect = None
    if keep is not None and ((top_k is not None and top_k < logits.shape[-1]) or (top_p is not None and top_p < 1)):
        protect = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device).scatter(-1, keep[..., None], True)
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        drop = logits < kth
        logits = logits.masked_fill(drop if protect is None else drop & ~protect, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= top_p  # keep the smallest prefix reaching top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop if protect is None else drop & ~protect, float("-inf"))
    return logits.log_softmax(-1)


def entropy_of(logprobs):
    p = logprobs.exp()
    return -(p * logprobs.masked_fill(p == 0, 0.0)).sum(-1)


def transfer_schedule(block_length, steps_per_block):
    """k_i: how many tokens step i of a block commits."""
    base, extra = divmod(block_length, steps_per_block)
    return [base + (i < extra) for i in range(steps_per_block)]


def uniform(shape, generator, device):
    """U(0,1) in float64, drawn where the generator lives (give one on the model's device: a CPU
    generator works with a CUDA model too, but draws a (rows, block, vocab) tensor on the CPU)."""
    where = generator.device if generator is not None else device
    return torch.rand(shape, dtype=torch.float64, device=where, generator=generator).to(device)


def left_pad(prompts, pad_id, device="cpu"):
    """List of token lists -> (ids, attention_mask), padded on the left so completions line up."""
    P = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), P), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(prompts), P), dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty")
        ids[i, P - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, P - len(p) :] = 1
    return ids, mask


def candidates(logits, mask_id, temperature, top_k, top_p, generator, device, confidence=True):
    """One step's proposals at the positions of `logits` (n, Bk, V): the sampling log-probs
    (n, Bk, V), a candidate x̂ per position (Gumbel-max with float64 noise; argmax at T = 0) and,
    with `confidence`, its confidence log softmax(ℓ)[x̂] under the untempered, untruncated
    distribution (n, Bk), else None (random unmasking needs none)."""
    lp = policy_logprobs(logits, mask_id, temperature, top_k, top_p)
    if temperature > 0:
        u = uniform(lp.shape, generator, device)
        gumbel = -torch.log(-torch.log(u.clamp_min(torch.finfo(torch.float64).tiny)))
        x_hat = (lp.double() + gumbel).argmax(-1)
    else:
        x_hat = lp.argmax(-1)
    if not confidence:
        return lp, x_hat, None
    raw = logits.double()
    raw[..., mask_id] = float("-inf")
    return lp, x_hat, raw.gather(-1, x_hat[..., None]).squeeze(-1) - raw.logsumexp(-1)


def commit(x, unmask_step, logp, entropy, rows, cols, chosen, x_hat, lp, step, P):
    """Write the chosen candidates: rows (n,), cols (n, Bk) absolute positions, chosen (n, Bk)
    bool, step (n,): the step of each row that commits them."""
    r, c = chosen.nonzero(as_tuple=True)
    R, C, tok = rows[r], cols[r, c], x_hat[r, c]
    dist = lp[r, c]  # (N, V): only the committed positions' distributions
    x[R, C] = tok
    unmask_step[R, C - P] = step[r]
    logp[R, C - P] = dist.gather(-1, tok[:, None]).squeeze(-1)
    entropy[R, C - P] = entropy_of(dist)


def check_blocks(model, block_length):
    """A block-causal model decodes in its own blocks: raise ValueError for any other block length."""
    if (size := block_size(model)) and block_length != size:
        raise ValueError(
            f"block_length={block_length} must be the model's block size {size}: it attends by blocks (a model "
            "trained with other blocks whose config names none: add its block_size to config.json)"
        )


@torch.no_grad()
def generate(
    model,
    prompt_ids,
    attention_mask=None,
    *,
    max_completion_length,
    block_length,
    sampling_steps,
    mask_id,
    eos_ids=(),
    temperature=0.0,
    top_k=None,
    top_p=None,
    unmasking="low_confidence",
    threshold=None,
    pad_id=0,
    generator=None,
    kv_cache=True,
):
    """Sample completions. prompt_ids: (B, P) left-padded tensor with `attention_mask`, or a list of
    token lists. A row whose finished blocks contain one of `eos_ids` is no longer computed; its
    later blocks are filled with EOS (logp = entropy = 0), which is what a trained LLaDA produces
    there and what the estimators ignore (they draw only steps up to the last one that committed a
    non-EOS token). With eos_ids=() every row runs to the end. `unmasking="threshold"` decodes with
    confidence threshold `threshold` instead of a fixed number of steps (generate_threshold).
    A block-diffusion model decodes with fixed steps over a KV cache of its finished blocks
    (blocks.py): the same tokens as recomputing everything, at a fraction of the positions; with
    kv_cache=False, or threshold decoding, every step runs the whole sequence."""
    check_settings(max_completion_length, block_length, sampling_steps, temperature, unmasking, top_k, top_p, threshold)
    check_blocks(model, block_length)
    gen_length, steps = max_completion_length, sampling_steps  # G and m, LLaDA's generate.py's names
    device = next(model.parameters()).device
    if isinstance(prompt_ids, (list, tuple)):
        prompt_ids, attention_mask = left_pad(prompt_ids, pad_id, device)
    prompt_ids = prompt_ids.to(device)
    B, P = prompt_ids.shape
    if attention_mask is None:
        attention_mask = torch.ones_like(prompt_ids)
    eos_ids = tuple(int(e) for e in (eos_ids if isinstance(eos_ids, (list, tuple)) else [eos_ids]))

    x = torch.cat([prompt_ids, torch.full((B, gen_length), mask_id, dtype=torch.long, device=device)], 1)
    attn = torch.cat(
        [attention_mask.to(device).long(), torch.ones((B, gen_length), dtype=torch.long, device=device)], 1
    )
    unmask_step = torch.full((B, gen_length), -1, dtype=torch.long, device=device)
    logp = torch.zeros((B, gen_length), device=device)
    entropy = torch.zeros((B, gen_length), device=device)
    state = (x, attn, unmask_step, logp, entropy)
    sampling = dict(
        mask_id=mask_id, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator, device=device
    )
    if unmasking == "threshold":
        steps, passes = generate_threshold(model, state, P, gen_length, block_length, threshold, eos_ids, sampling)
    else:
        cache = kv_cache and bool(block_size(model))
        passes = fixed_steps(model, state, P, gen_length, block_length, steps, unmasking, eos_ids, sampling, cache)
    return Rollout(
        ids=x,
        attention_mask=attn,
        prompt_length=P,
        unmask_step=unmask_step,
        logp=logp,
        entropy=entropy,
        steps=steps,
        mask_id=mask_id,
        eos_ids=eos_ids,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        passes=passes,
    )


def fixed_steps(model, state, P, gen_length, block_length, steps, unmasking, stop_eos, sampling, kv_cache=False):
    """LLaDA's sampler: every block in steps·B/G steps, step i committing k_i positions. kv_cache (a
    block-causal model): the prompt runs once into a KV cache, each step runs only its block over the
    cache, and each finished block runs once more to add its keys and values."""
    x, attn, unmask_step, logp, entropy = state
    B, device = x.shape[0], x.device
    n_blocks = gen_length // block_length
    spb = steps // n_blocks
    schedule = transfer_schedule(block_length, spb)
    fill_steps = torch.repeat_interleave(torch.arange(spb, device=device), torch.tensor(schedule, device=device))
    done = torch.zeros(B, dtype=torch.bool, device=device)
    passes = torch.zeros(B, dtype=torch.long, device=device)
    cache, cached_rows = None, torch.arange(B, device=device)
    if kv_cache:
        from transformers import DynamicCache

        cache = DynamicCache()
        cached_call(model, x, attn, 0, P, cache, store=True)
    for b in range(n_blocks):
        lo, hi = P + b * block_length, P + (b + 1) * block_length
        rows = (~done).nonzero().squeeze(1)
        if cache is not None and len(rows) < len(cached_rows):  # finished rows leave the cache too
            cache.batch_select_indices(torch.searchsorted(cached_rows, rows))
            cached_rows = rows
        passes[rows] += spb
        cols = torch.arange(lo, hi, device=device).expand(len(rows), -1)
        for i, k in enumerate(schedule):
            if cache is None:
                logits = forward_logits(model, x[rows], attn[rows], at=(slice(None), slice(lo, hi)))  # this block only
            else:
                logits = cached_call(model, x[rows], attn[rows], lo, hi, cache)
            lp, x_hat, conf = candidates(logits, **sampling, confidence=unmasking == "low_confidence")
            if unmasking == "random":
                conf = uniform(x_hat.shape, sampling["generator"], device)
            conf = conf.masked_fill(x[rows, lo:hi] != sampling["mask_id"], float("-inf"))
            chosen = torch.zeros_like(conf, dtype=torch.bool).scatter_(1, conf.topk(k, dim=-1).indices, True)
            commit(x, unmask_step, logp, entropy, rows, cols, chosen, x_hat, lp, torch.full_like(rows, b * spb + i), P)
        if cache is not None and b < n_blocks - 1:  # the finished block's keys and values, for every later step
            cached_call(model, x[rows], attn[rows], lo, hi, cache, store=True)
        if done.any():  # finished rows: EOS in this block's positions, in schedule order
            x[done, lo:hi] = stop_eos[0]
            unmask_step[done, b * block_length : (b + 1) * block_length] = b * spb + fill_steps
        if stop_eos:
            done |= torch.isin(x[:, P:hi], torch.tensor(stop_eos, device=device)).any(1)
            if done.all():  # fill the remaining blocks at once
                for b2 in range(b + 1, n_blocks):
                    x[:, P + b2 * block_length : P + (b2 + 1) * block_length] = stop_eos[0]
                    unmask_step[:, b2 * block_length : (b2 + 1) * block_length] = b2 * spb + fill_steps
                break
    return passes


def cached_call(model, x, attn, lo, hi, cache, store=False):
    """Logits of positions [lo, hi) run over a cache of [0, lo) (none when storing them)."""
    ids, kw = blocks.cached_inputs(x, attn, lo, hi, cache, block_size(model), store)
    return selected_logits(model, ids, kw, (slice(None), slice(0 if store else None)))


def generate_threshold(model, state, P, gen_length, block_length, threshold, stop_eos, sampling):
    """Confidence-threshold parallel decoding (Fast-dLLM's rule) as an exact policy: at each of its
    steps a row commits every masked position of its current block whose confidence is at least
    `threshold`, and at least the most confident one. Rows advance through their blocks on their
    own (a row whose block is full moves to its next; a finished row is no longer computed), so each
    row has its own number of steps m', recorded in unmask_step as for fixed steps. A row whose
    finished blocks hold an EOS is filled with EOS at its next step index. Returns the width of the
    step axis (the most steps of any row, its EOS fill included) and each row's forward passes."""
    x, attn, unmask_step, logp, entropy = state
    B, L, device = x.shape[0], x.shape[1], x.device
    n_blocks = gen_length // block_length
    block = torch.zeros(B, dtype=torch.long, device=device)  # each row's current block
    step = torch.zeros(B, dtype=torch.long, device=device)  # each row's next step index
    active = torch.ones(B, dtype=torch.bool, device=device)
    log_tau = math.log(threshold)
    eos = torch.tensor(stop_eos, dtype=torch.long, device=device)
    while active.any():
        rows = active.nonzero().squeeze(1)
        cols = P + block[rows, None] * block_length + torch.arange(block_length, device=device)  # (n, Bk)
        at = torch.zeros((len(rows), L), dtype=torch.bool, device=device).scatter_(1, cols, True)
        logits = forward_logits(model, x[rows], attn[rows], at=at).view(len(rows), block_length, -1)
        lp, x_hat, conf = candidates(logits, **sampling)
        masked = x[rows[:, None], cols] == sampling["mask_id"]
        conf = conf.masked_fill(~masked, float("-inf"))
        chosen = (conf >= log_tau) & masked
        chosen.scatter_(1, conf.topk(1, dim=-1).indices, True)  # at least the most confident
        commit(x, unmask_step, logp, entropy, rows, cols, chosen, x_hat, lp, step[rows], P)
        step[rows] += 1
        full = rows[~(masked & ~chosen).any(1)]  # rows whose block is now complete
        if len(full):
            ended = torch.isin(x[full, P:], eos).any(1) if len(stop_eos) else torch.zeros_like(full, dtype=torch.bool)
            block[full] += 1
            last = block[full] == n_blocks
            for r in full[ended & ~last].tolist():  # EOS seen: the rest is EOS, committed at the row's next step
                start = P + int(block[r]) * block_length
                x[r, start:] = stop_eos[0]
                unmask_step[r, start - P :] = step[r]
            active[full[ended | last]] = False
    filled = (unmask_step == step[:, None]).any(1)
    return int((step + filled.long()).max()), step


def decode_completions(tok, rollout):
    """Texts up to the first EOS (what a reward sees) and their lengths in tokens."""
    texts, lengths = [], []
    for row, row_eos in zip(rollout.completion, rollout.is_eos):
        hits = row_eos.nonzero()
        n = int(hits[0]) if len(hits) else len(row)
        texts.append(tok.decode(row[:n].tolist(), skip_special_tokens=True))
        lengths.append(n)
    return texts, torch.tensor(lengths)
