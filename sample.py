"""The sampler: LLaDA's semi-autoregressive unmasking, recording the trajectory AGRPO's policy is defined on
(ALGORITHM.md §1 says why each choice is made).

x = [prompt ; G × MASK] is cut into G/b blocks filled left to right in s = m·b/G steps each; step i of a block
(b masked positions at its start) commits c_i = ⌊b/s⌋ + [i < b mod s] of them: the most confident candidates (Gumbel-max
draws, argmax at T = 0), random ones, or (threshold τ) every one at least τ confident and at least the c_i
most confident, so a block takes at most s steps. Each step t is one action: with S_t the positions it commits
and x_t the state before it,

    log π_θ(o) = Σ_t Σ_{j∈S_t} log p_θ(o_j | x_t),

so every completion token records `unmask_step` (t), `logp` (log p_θ(o_j | x_t) under the sampling
distribution: mask removed, temperature, top-k, top-p; at T = 0 the temperature-1 one) and its `entropy`.
"""

import math
from dataclasses import dataclass

import torch

import blocks
from plumbing.data import left_pad
from plumbing.families import block_size, check_blocks
from plumbing.logits import cache_rows, cached_logits, forward_logits, prefill_cache

UNMASKING = ("low_confidence", "random", "threshold")


@dataclass
class Rollout:
    ids: torch.Tensor  # (B, P+G) prompt (left-padded) and completion
    attention_mask: torch.Tensor  # (B, P+G) 0 on prompt padding
    prompt_length: int  # P, padded prompt length
    unmask_step: torch.Tensor  # (B, G) global step that committed each completion token
    logp: torch.Tensor  # (B, G) log-prob of the committed token at its step
    entropy: torch.Tensor  # (B, G) entropy of the sampling distribution there
    steps: int  # m, the rollout's unmasking steps
    mask_id: int
    eos_ids: tuple
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    passes: torch.Tensor | None = None  # (B,) forward passes each row took (threshold decoding: its own m)

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
    Threshold decoding takes `sampling_steps` as its most steps (at least G/m positions a step)."""
    G, steps = max_completion_length, sampling_steps
    if G < 1:
        raise ValueError(f"max_completion_length={G} must be at least 1")
    if block_length < 1 or G % block_length:
        raise ValueError(f"block_length={block_length} must divide max_completion_length={G}")
    n_blocks = G // block_length
    if unmasking == "threshold":
        if not (isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and 0 < threshold < math.inf):
            raise ValueError(
                f"threshold={threshold!r} must be a finite number > 0: the confidence that commits a position (>1: "
                "low-confidence at sampling_steps)"
            )
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


def policy_logprobs(logits, *, mask_id, temperature=0.0, top_k=None, top_p=None, keep=None):
    """log π(· | x_t) per position: the sampling distribution, shared by sampler and likelihood so the two
    never disagree. logits (..., V), any dtype; returns float32 log-probs. keep (...,): token ids top-k and
    top-p never remove (the likelihood's sampled tokens: one at the edge of the set must not get log p = −inf,
    ALGORITHM.md §1)."""
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
    """c_i: how many tokens step i of a block commits."""
    base, extra = divmod(block_length, steps_per_block)
    return [base + (i < extra) for i in range(steps_per_block)]


def uniform(shape, generator, device):
    """U(0,1) in float64, drawn where the generator lives (give one on the model's device: a CPU
    generator works with a CUDA model too, but draws a (rows, block, vocab) tensor on the CPU)."""
    where = generator.device if generator is not None else device
    return torch.rand(shape, dtype=torch.float64, device=where, generator=generator).to(device)


def candidates(logits, *, mask_id, temperature, top_k, top_p, generator, device, confidence=True):
    """One step's proposals at the positions of `logits` (n, Bk, V): the sampling log-probs
    (n, Bk, V), a candidate x̂ per position (Gumbel-max with float64 noise; argmax at T = 0) and,
    with `confidence`, its confidence log softmax(ℓ)[x̂] under the untempered, untruncated
    distribution (n, Bk), else None (random unmasking needs none)."""
    lp = policy_logprobs(logits, mask_id=mask_id, temperature=temperature, top_k=top_k, top_p=top_p)
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


def commit(x, unmask_step, logp, entropy, *, rows, cols, chosen, x_hat, lp, step):
    """Write the chosen candidates on the canvas: rows (n,), cols (n, Bk) canvas columns, chosen (n, Bk)
    bool, step (n,): the step of each row that commits them. Every candidate's values are computed and kept
    where chosen, so which ones are is never read to the host."""
    at = (rows[:, None], cols)
    x[at] = torch.where(chosen, x_hat, x[at])
    unmask_step[at] = torch.where(chosen, step[:, None], unmask_step[at])
    logp[at] = torch.where(chosen, lp.gather(-1, x_hat[..., None]).squeeze(-1), logp[at])
    entropy[at] = torch.where(chosen, entropy_of(lp), entropy[at])


@torch.no_grad()
def generate(
    model, prompt_ids, attention_mask=None, *, max_completion_length, block_length, sampling_steps, mask_id,
    eos_ids=(), temperature=0.0, top_k=None, top_p=None, unmasking="low_confidence", threshold=None, pad_id=0,
    generator=None, kv_cache=True,
):  # fmt: skip
    """Sample completions. prompt_ids: (B, P) left-padded tensor with `attention_mask`, or a list of
    token lists. A row whose finished blocks contain one of `eos_ids` is no longer computed; its
    later blocks are filled with EOS (logp = entropy = 0), which is what a trained LLaDA produces
    there and what the estimators ignore (they draw only steps up to the last one that committed a
    non-EOS token). With eos_ids=() every row runs to the end. `unmasking="threshold"` decodes with
    confidence threshold `threshold`, each row in its own number of steps, at most `sampling_steps` (decode).

    A block-diffusion model decodes in its own layout (blocks.py): blocks counted from each row's first
    token, the prompt's last P mod b tokens in the first decoded block, the last block whole, so a row
    decodes up to b − 1 positions past max_completion_length. Those are its completion as any other:
    the reward reads them and the log-probs count them. A row that decodes fewer positions than the
    batch's widest holds EOS (pad_id without eos_ids) past its last block, at no step (unmask_step −1).
    Over a KV cache of its finished blocks (kv_cache) it gives the same tokens as recomputing everything
    at a fraction of the positions."""
    check_settings(max_completion_length, block_length, sampling_steps, temperature, unmasking, top_k, top_p, threshold)
    check_blocks(model, block_length)
    G, b = max_completion_length, block_length
    device = next(model.parameters()).device
    if isinstance(prompt_ids, (list, tuple)):
        prompt_ids, attention_mask = left_pad(prompt_ids, pad_id, device)
    prompt_ids = prompt_ids.to(device)
    B, P = prompt_ids.shape
    attention_mask = torch.ones_like(prompt_ids) if attention_mask is None else attention_mask.to(device).long()
    eos_ids = tuple(int(e) for e in (eos_ids if isinstance(eos_ids, (list, tuple)) else [eos_ids]))
    native = bool(block_size(model))  # a block model's blocks count from each row's first token
    fill = eos_ids[0] if eos_ids else pad_id
    x, attn, first, tail, n_blocks, width = blocks.canvas(
        prompt_ids, attention_mask, completion_length=G, b=b, from_row_start=native, mask_id=mask_id, fill_id=fill
    )
    unmask_step = torch.full_like(x, -1)
    logp, entropy = torch.zeros(x.shape, device=device), torch.zeros(x.shape, device=device)
    state, layout = (x, attn, unmask_step, logp, entropy), (first, tail, n_blocks, b)
    sampling = dict(
        mask_id=mask_id, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator, device=device
    )
    tau = threshold if unmasking == "threshold" else 0
    per_block = sampling_steps // (G // b)
    steps, passes = decode(
        model, state, layout, stop_eos=eos_ids, sampling=sampling, kv_cache=kv_cache and native,
        steps_per_block=per_block, unmasking=unmasking, tau=tau,
    )  # fmt: skip
    columns = blocks.completion_columns(first, tail, width)
    completion = torch.ones(columns.shape, dtype=torch.long, device=device)
    ids, attention_mask = torch.cat([prompt_ids, x.gather(1, columns)], 1), torch.cat([attention_mask, completion], 1)
    trajectory = dict(unmask_step=unmask_step.gather(1, columns), logp=logp.gather(1, columns))
    return Rollout(
        ids, attention_mask, P, **trajectory, entropy=entropy.gather(1, columns), steps=steps, mask_id=mask_id,
        eos_ids=eos_ids, temperature=temperature, top_k=top_k, top_p=top_p, passes=passes,
    )  # fmt: skip


def decode(model, state, layout, *, stop_eos, sampling, kv_cache, steps_per_block, unmasking="low_confidence", tau=0):
    """The blocks in order, each until its masks are filled, a step committing on every row that still has
    masks in the block: with `steps_per_block` s, LLaDA's c_i positions at step i, or as many as are left
    (a first block that holds the prompt's tail has fewer masks and ends early, as SDAR's does); with
    threshold `tau`, confidence-threshold parallel decoding as an exact policy: every masked position whose
    confidence is at least tau, and at least the c_i most confident, so a block still takes at most s steps.
    That is SDAR's low_confidence_dynamic with s steps a block (its denoising_steps_per_block; where fewer
    than c_i masks are left it commits those, where SDAR's code would overwrite a committed or prompt token);
    with s = b (c_i = 1) it is Fast-dLLM's rule and dLLM-RL's LLaDA dynamic threshold, which take no step
    count. Each row counts its own steps (its own m). A row with an EOS in a finished block is no
    longer computed: fixed steps fill its later blocks with EOS in schedule order, threshold decoding at its
    next step. kv_cache (a block-causal model): the prompt runs once into a KV cache, a step runs only the
    block over it, and each finished block but the last runs once more to add its keys and values.
    Returns the width of the step axis and each row's forward passes."""
    x, attn, unmask_step, logp, entropy = state
    first, tail, n_blocks, b = layout
    (B, S), device, mask_id = x.shape, x.device, sampling["mask_id"]
    schedule = transfer_schedule(b, steps_per_block)
    fill_steps = torch.arange(len(schedule), device=device).repeat_interleave(
        torch.tensor(schedule, device=device), output_size=b
    )
    in_completion = torch.arange(S, device=device) >= first + tail[:, None]
    eos = torch.tensor(stop_eos, dtype=torch.long, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)  # an EOS in a finished block
    step = torch.zeros(B, dtype=torch.long, device=device)  # each row's next step
    passes = torch.zeros(B, dtype=torch.long, device=device)
    cache, cached_rows = prefill_cache(model, x, attn, first) if kv_cache else None, torch.arange(B, device=device)
    # the rollout's one read before its steps: its blocks, and each row's left padding (a forward's, never read again)
    N, *padding = torch.cat([n_blocks.max()[None], (attn == 0).sum(1)]).tolist()
    column = torch.arange(S, device=device)

    def ended():  # rows with an EOS in a finished block, as the block stands
        if not stop_eos:
            return torch.zeros_like(done)
        return (torch.isin(x[:, :hi], eos) & in_completion[:, :hi]).any(1) & ~done

    def to_commit(decoding, start, k):  # (B,) masks a step commits in columns [start, start + b), −1 off `decoding`
        return torch.where(decoding, (x[:, start : start + b] == mask_id).sum(1).clamp(max=k), -1)

    # A step reads the host once: each row's masks to commit, and the next block's first step's should this block
    # end here (a row's EOS ends it), so a block that ends early needs no read of its own (no read waits per row).
    read = None  # (counts on the device, the same on the host) of the step about to run
    for block in range(N):
        lo, hi = first + block * b, first + (block + 1) * b
        live = (block < n_blocks) & ~done
        rows = None
        for k in schedule:
            if read is None:
                ahead = (block + 1 < n_blocks) & ~done & ~ended()
                counts = torch.stack([to_commit(live, lo, k), to_commit(ahead, hi, schedule[0])])
                now, then = counts.tolist()  # the step's one read
                read, read_ahead = (counts[0], now), (counts[1], then)
            count, host = read
            if rows is None:  # the block's first step: the rows that decode it
                rows = live.nonzero_static(size=sum(c >= 0 for c in host)).squeeze(1)
                if cache is not None and len(rows) < len(cached_rows):  # rows that ended leave the cache too
                    cache.batch_select_indices(torch.searchsorted(cached_rows, rows))
                    cached_rows = rows
            if not any(c > 0 for c in host):  # the block ends early: this read holds the next block's first step
                read = read_ahead if len(rows) else read  # (no row decodes this block: none decodes a later one)
                break
            read = None
            going_rows = [r for r, c in enumerate(host) if c > 0]
            going = (count[rows] > 0).nonzero_static(size=len(going_rows)).squeeze(1)
            sub, most = rows[going], max(host)
            masked, count = x[sub, lo:hi] == mask_id, count[sub]
            if cache is None:
                at, pads = (slice(None), slice(lo, hi)), [padding[r] for r in going_rows]  # this block only
                logits = forward_logits(model, x[sub], attn[sub], at=at, padding=pads)
            else:
                part = cache if len(going) == len(rows) else cache_rows(cache, going)
                logits = cached_logits(model, x[sub], attn[sub], lo, hi, part)
            passes[sub] += 1
            lp, x_hat, conf = candidates(logits, **sampling, confidence=unmasking != "random")
            if unmasking == "random":
                conf = uniform(x_hat.shape, sampling["generator"], device)
            conf = conf.masked_fill(~masked, float("-inf"))
            top = conf.topk(most, dim=-1).indices
            chosen = torch.zeros_like(masked).scatter_(1, top, torch.arange(most, device=device) < count[:, None])
            if tau:  # and every other masked position at least tau confident
                chosen |= (conf >= math.log(tau)) & masked
            cols = torch.arange(lo, hi, device=device).expand(len(sub), -1)
            commit(
                x, unmask_step, logp, entropy, rows=sub, cols=cols, chosen=chosen, x_hat=x_hat, lp=lp, step=step[sub]
            )
            step[sub] += 1
        if cache is not None and rows is not None and len(rows) and block < N - 1:  # the finished block's keys and
            cached_logits(model, x[rows], attn[rows], lo, hi, cache, store=True)  # values, for later steps
        if stop_eos:  # rows that ended: EOS in this block's positions, in schedule order
            filled = done & (block < n_blocks)
            x[:, lo:hi].masked_fill_(filled[:, None], stop_eos[0])
            unmask_step[:, lo:hi] = torch.where(filled[:, None], step[:, None] + fill_steps, unmask_step[:, lo:hi])
            step += filled * len(schedule)
            now_ended = ended()
            if tau:  # threshold: the rest is EOS, committed at the row's next step
                cut = now_ended & (block + 1 < n_blocks)
                rest = cut[:, None] & (column >= hi) & (column < first + n_blocks[:, None] * b)
                x.masked_fill_(rest, stop_eos[0])
                unmask_step.copy_(torch.where(rest, step[:, None], unmask_step))
                step += cut
                n_blocks = torch.where(now_ended, block + 1, n_blocks)
            done |= now_ended
    return (int(step.max()) if tau else N * steps_per_block), passes


def decode_completions(tok, rollout):
    """The texts before the first EOS (what a reward reads) and their lengths n in tokens."""
    texts, lengths = [], []
    for row, row_eos in zip(rollout.completion, rollout.is_eos):
        hits = row_eos.nonzero()
        n = int(hits[0]) if len(hits) else len(row)
        texts.append(tok.decode(row[:n].tolist(), skip_special_tokens=True))
        lengths.append(n)
    return texts, torch.tensor(lengths)
