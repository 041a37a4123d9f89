"""How a block-diffusion model (SDAR, TraDo, the embedded tiny_block) is called: each position's block and
position counted from its row's first real token, the block-causal attention mask, and the same over a KV cache
of finished blocks. SDAR's code takes them as arguments (a (B, 1, Q, K) bool mask, position_ids,
past_key_values, store_kv); blocks.py lays out what the algorithm runs through them."""

import torch


def positions(attention_mask):
    """(B, L) position of each token counted from its row's first real token (left padding: 0)."""
    return (attention_mask.long().cumsum(1) - 1).clamp(min=0)


def block_of(attention_mask, size):
    """(B, L) the block of each position, counted from its row's first real token; -1 on left padding."""
    real = attention_mask.long().cumsum(1) - 1
    return torch.where(real >= 0, real // size, -1)


def causal_mask(attention_mask, size):
    """(B, 1, L, L) bool, True = may attend: a position sees its own block and the blocks before it, padding
    (attention_mask 0) is never a key, and every position sees itself (a padded query attends to something:
    no NaN)."""
    L = attention_mask.shape[1]
    index = block_of(attention_mask, size)
    allowed = (index[:, None, :] <= index[:, :, None]) & attention_mask.bool()[:, None, :]
    return (allowed | torch.eye(L, dtype=torch.bool, device=allowed.device))[:, None]


def cached_inputs(ids, attention_mask, lo, hi, cache, size, store=False):
    """The model arguments that run columns [lo, hi) of `ids` over a cache holding [0, lo): block-causal in
    blocks of `size` among themselves (lo on a block boundary of every row), seeing every real cached
    position; lo = 0 is the prompt's prefill. `store` appends their keys and values to the cache."""
    prefix = attention_mask[:, :lo].bool()[:, None, None, :].expand(-1, 1, hi - lo, -1)
    mask = torch.cat([prefix, causal_mask(attention_mask[:, lo:hi], size)], -1)
    call = dict(attention_mask=mask, position_ids=positions(attention_mask[:, :hi])[:, lo:], past_key_values=cache)
    return ids[:, lo:hi], call | dict(store_kv=store)
