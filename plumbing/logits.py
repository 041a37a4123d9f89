"""The denoiser's logits where the algorithm reads them: p_θ(x_0 | x_t) at chosen positions only,
whatever the family (which position predicts a token, a block model's mask, padding the model's own
code may mishandle), the same over a block model's KV cache of finished blocks, and a count of the positions
every forward runs.

    forward_logits(model, ids, attention_mask, at=(slice(None), slice(lo, hi)))   # one block's logits
    forward_logits(model, ids, attention_mask, at=read_mask)                       # (N, V) at N positions
"""

import torch

from plumbing.block_attention import cached_inputs, causal_mask, positions
from plumbing.families import block_size, family_of, family_part, unwrap


@torch.no_grad()
def probe_padding_mask(model, pad_id):
    """True if left padding masked out by `attention_mask` leaves the real tokens' logits unchanged,
    i.e. the model reads the mask as a bidirectional key-padding mask. Judged against what attending
    the padding does to the same logits, not against a fixed tolerance: bf16 rounding alone moves
    LLaDA's logits by more than 1% of the largest one. A model that ignores the mask moves them
    exactly as attended padding does, one that turns it into a causal mask moves them more."""
    p = next(model.parameters())
    ids = torch.arange(12, device=p.device)[None] % 32 + 3
    padded = torch.cat([torch.full((1, 6), pad_id, device=p.device), ids], 1)
    mask = (torch.arange(18, device=p.device) >= 6).long()[None]
    plain = model(ids).logits.float()
    attended = model(padded).logits[:, 6:].float()
    try:
        masked = model(padded, attention_mask=mask).logits[:, 6:].float()
    except (TypeError, ValueError, RuntimeError):  # no attention_mask argument, or a shape it rejects
        return False
    masked_error, attended_error = (masked - plain).abs().mean(), (attended - plain).abs().mean()
    return bool((masked_error < 0.5 * attended_error).item())


def forward_logits(model, ids, attention_mask=None, at=None, padding=None):
    """Logits (B, L, V), or with `at` only logits[at]: `at` indexes the (B, L) positions, a bool mask
    (giving (N, V) in row-major order) or a tuple of slices such as (slice(None), slice(lo, hi)).
    Only those positions go through the vocabulary projection: the sampler reads one block, the
    estimators read the tokens of one step, and for LLaDA-8B the full (B, L, 126464) logits and their
    gradient are the largest tensors of an update.

    The padding mask is passed only to models that honour it (`probe_padding_mask`), in float32: some
    copies of LLaDA's code turn a padded mask into a *causal* bias or ignore it, and in bf16 masked
    padding still moves a row's rounding. Otherwise rows are run in groups of equal padding with the
    padding cut off, so no row ever attends padding and each row's logits are those of the row alone,
    whatever its batch-mates. padding: each row's left padding as host numbers, where the caller knows them
    (the sampler, once a rollout): then the padding is never read from the device."""
    shift = family_of(model).shift
    if shift and at is None:  # a next-token head: token i's logits are position i - 1's (the first keeps its own)
        logits = _padded_logits(model, ids, attention_mask, None, padding)
        return torch.cat([logits[:, :shift], logits[:, :-shift]], 1)
    if shift and torch.is_tensor(at):
        if bool(at[:, :shift].any()):
            raise ValueError(f"forward_logits: the first {shift} positions have no position before them to read")
        at = at.roll(-shift, 1)
    elif shift:
        lo, hi = at[1].start or 0, at[1].stop
        if lo < shift:
            raise ValueError(f"forward_logits: columns {at[1]} start before position {shift}")
        at = (at[0], slice(lo - shift, -shift if hi is None else hi - shift))
    return _padded_logits(model, ids, attention_mask, at, padding)


def _padded_logits(model, ids, attention_mask, at, padding=None):
    """forward_logits without the shift: the positions `at` themselves, padding handled. A block model
    gets its block-causal mask built here, with the padding in it (SDAR's code reads a 2-D mask as
    bidirectional), and positions counted from each row's first token."""
    if size := block_size(model):
        attention_mask = torch.ones_like(ids) if attention_mask is None else attention_mask
        call = dict(attention_mask=causal_mask(attention_mask, size), position_ids=positions(attention_mask))
        return selected_logits(model, ids, call, at)
    pads = None if attention_mask is None else (attention_mask == 0).sum(1)
    if pads is None or not (any(padding) if padding is not None else bool(pads.any())):
        return selected_logits(model, ids, {}, at)
    if getattr(unwrap(model), "honours_padding_mask", False) and computes_in_float32(model, ids.device):
        return selected_logits(model, ids, {"attention_mask": attention_mask}, at)
    return _unpadded_logits(model, ids, pads, at, padding)


def computes_in_float32(model, device):
    """Whether the forward runs in float32. In bf16 a masked padding still changes a row's rounding (its
    softmax runs over more keys), enough to flip greedy tokens: there rows run cut to their own length."""
    autocast = torch.is_autocast_enabled(device.type) if device.type in ("cuda", "cpu") else False
    return next(model.parameters()).dtype == torch.float32 and not autocast


def _unpadded_logits(model, ids, pads, at, padding=None):
    """forward_logits for a model that attends padding: one forward per padding length, each on its
    rows with the left padding cut off, put back where the batch's positions are (padding: pads on the host)."""
    B, L = ids.shape
    if torch.is_tensor(at):
        if bool((at & (torch.arange(L, device=at.device) < pads[:, None].to(at.device))).any()):
            raise ValueError("forward_logits: a position selected for scoring is prompt padding")
        index = torch.full((B, L), -1, dtype=torch.long, device=at.device)
        index[at] = torch.arange(int(at.sum()), device=at.device)
    out = None
    for pad in sorted(set(padding)) if padding is not None else pads.unique().tolist():
        rows = (pads == pad).nonzero_static(size=padding.count(pad)) if padding is not None else (pads == pad).nonzero()
        rows = rows.squeeze(1)
        if at is None:
            part, where = selected_logits(model, ids[rows, pad:], {}, None), (rows, slice(pad, None))
        elif torch.is_tensor(at):
            sub = at[rows.to(at.device), pad:]
            part, where = selected_logits(model, ids[rows, pad:], {}, sub), index[rows.to(at.device), pad:][sub]
        else:  # (slice(None), slice(lo, hi)): the same columns, shifted by the padding cut off
            cols = at[1]
            shifted = slice(
                None if cols.start is None else cols.start - pad, None if cols.stop is None else cols.stop - pad
            )
            part, where = selected_logits(model, ids[rows, pad:], {}, (slice(None), shifted)), rows
        if out is None:
            V = part.shape[-1]
            out = part.new_zeros(
                (B, L, V) if at is None else (int(at.sum()), V) if torch.is_tensor(at) else (B, *part.shape[1:])
            )
        out[where] = part
    return out


def selected_logits(model, ids, kw, at):
    """logits[at] of model(ids, **kw), only those positions through the vocabulary head."""
    bare = unwrap(model)
    if at is None:
        return model(ids, **kw).logits
    # logits = head(final_norm(x)): selecting the final norm's output selects what the head projects
    # (kept 3-D, (1, N, D) for a mask: heads such as Dream's index the sequence axis)
    flat = torch.is_tensor(at)
    # counted before the forward: a read after it would stall the device between the forward and its backward
    expected = (int(at.sum()),) if flat else torch.empty(ids.shape, device="meta")[at].shape
    select = (lambda module, inputs, out: out[at][None]) if flat else (lambda module, inputs, out: out[at])
    handle = family_part(model, "final_norm").register_forward_hook(select)
    try:
        logits = model(ids, **kw).logits
    finally:
        handle.remove()
    logits = logits[0] if flat else logits
    if logits.shape[:-1] != expected:
        name, got = type(bare).__name__, tuple(logits.shape)
        raise RuntimeError(
            f"{name}: logits of shape {got} after selecting positions, expected {tuple(expected)} + (vocab,)"
        )
    return logits


def prefill_cache(model, x, attn, first):
    """A KV cache holding a block model's canvas before its first decoded block (columns [0, first))."""
    from transformers import DynamicCache

    cache = DynamicCache()
    if first:
        cached_logits(model, x, attn, 0, first, cache, store=True)
    return cache


def cache_rows(cache, index):
    """A cache of some of `cache`'s rows (index into its batch), the original left as it is."""
    from transformers import DynamicCache

    part = DynamicCache()
    for layer in range(len(cache)):
        keys, values = cache[layer]
        part.update(keys[index], values[index], layer)
    return part


def cached_logits(model, x, attn, lo, hi, cache, store=False):
    """Logits of columns [lo, hi) run over a cache of [0, lo) (none when storing them)."""
    ids, kw = cached_inputs(x, attn, lo, hi, cache, block_size(model), store)
    return selected_logits(model, ids, kw, (slice(None), slice(0 if store else None)))


def count_positions(model):
    """A one-item list counting the token positions that every forward of `model` runs from now on
    (the input ids' size: prompt padding, cached and packed inputs as they are run)."""
    count = [0]

    def hook(module, args, kwargs):
        count[0] += (args[0] if args else kwargs["input_ids"]).numel()

    unwrap(model).register_forward_pre_hook(hook, with_kwargs=True)
    return count
