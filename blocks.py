"""Block-diffusion models (SDAR, TraDo, the embedded tiny_block): attention by blocks, and the two
exact shortcuts it gives (ALGORITHM.md §6).

A block-causal model cuts the sequence into blocks of `size` (counted from the end, so a completion
of whole blocks lines up with the sampler's blocks) and lets a position see its own block and every
block before it, never a later one. The sampler fills the blocks in order, so

1. at every step the blocks before the current one are finished: their keys and values never
   change again, and a rollout keeps them in a KV cache and runs only the current block;
2. the state x_t of step t differs from the final sequence only inside the block b(t) of that step
   (earlier blocks are clean, later ones are invisible to it). So log p_θ(o_j | x_t) for the tokens
   of step t is the model's output on the clean prefix before b(t) followed by one noisy copy of
   block b(t). Many steps fit in one forward: the clean sequence, then one noisy copy of a block
   per step, each copy seeing the clean prefix before its block and itself, at its block's
   positions. With every step that is the exact stepwise sum in one pass of P + G + m·size positions.
   The same layout scores an ELBO draw block by block (one copy per block, each given the final
   blocks before it): the block-wise bound that block-diffusion models are trained with.

Everything here builds masks and inputs; the model is called through logits.selected_logits with
SDAR's arguments: a (B, 1, Q, K) bool attention mask, position_ids, past_key_values and store_kv.
"""

import torch


def block_index(length, size, device=None):
    """(length,) block of each position, counted from the end: the last `size` positions are block 0."""
    return (length - 1 - torch.arange(length, device=device)) // size


def causal_mask(attention_mask, size):
    """(B, 1, L, L) bool, True = may attend: block-causal, padding (attention_mask 0) never seen as a
    key, and every position sees itself (a padded query attends to something: no NaN)."""
    B, L = attention_mask.shape
    index = block_index(L, size, attention_mask.device)
    allowed = (index[None, :] >= index[:, None])[None] & attention_mask.bool()[:, None, :]
    return (allowed | torch.eye(L, dtype=torch.bool, device=allowed.device))[:, None]


def cached_mask(attention_mask, lo, hi):
    """(B, 1, hi - lo, hi) mask of the block [lo, hi) run over a cache of positions [0, lo): every
    real cached position, and the whole block."""
    prefix = attention_mask[:, :lo].bool()[:, None, None, :].expand(-1, 1, hi - lo, -1)
    return torch.cat([prefix, prefix.new_ones((len(prefix), 1, hi - lo, hi - lo))], -1)


def cached_inputs(ids, attention_mask, lo, hi, cache, size, store=False):
    """The model arguments that run positions [lo, hi) of `ids` over a cache holding [0, lo): one
    block, or (lo = 0) the prompt's prefill, block-causal in blocks of `size`; `store` appends their
    keys and values to the cache."""
    n = len(ids)
    mask = causal_mask(attention_mask[:, :hi], size) if lo == 0 else cached_mask(attention_mask, lo, hi)
    positions = torch.arange(lo, hi, device=ids.device).expand(n, -1)
    return ids[:, lo:hi], dict(attention_mask=mask, position_ids=positions, past_key_values=cache, store_kv=store)


def packed_states(ids, attention_mask, x, read, prompt_length, size):
    """One forward's input that scores K draws per row block by block. ids (n, L): the final
    sequences; x (K, n, L): the draws' inputs; read (K, n, G): the completion positions each scores.
    Every block a draw reads becomes one copy of that block of x, which sees the blocks of ids before
    it and itself. Returns (packed ids, call arguments, read, columns, draw): the (n, L + C·size)
    input with its mask and positions; per copy position (n, C, size) whether it is scored and the
    column of ids it stands for; per copy (n, C) its draw. C is the most copies of any row; a row's
    spare copies score nothing."""
    K, n, L = x.shape
    P, device = prompt_length, x.device
    blocks = (L - P) // size
    wanted = read.view(K, n, blocks, size).any(-1).transpose(0, 1).reshape(n, K * blocks)  # (row, draw·block)
    C = max(int(wanted.sum(1).max()), 1)
    order = torch.sort((~wanted).long(), dim=1, stable=True).indices[:, :C]  # each row's read (draw, block) first
    valid = wanted.gather(1, order)
    draw, block = order // blocks, (order % blocks).masked_fill(~valid, 0)
    columns = P + block[..., None] * size + torch.arange(size, device=device)  # (n, C, size)
    rows = torch.arange(n, device=device)[:, None, None]
    copies = x[draw[..., None], rows, columns]
    copy_read = read[draw[..., None], rows, columns - P] & valid[..., None]

    packed = torch.cat([ids, copies.flatten(1)], 1)
    positions = torch.cat([torch.arange(L, device=device).expand(n, -1), columns.flatten(1)], 1)
    Q = L + C * size
    mask = torch.zeros((n, 1, Q, Q), dtype=torch.bool, device=device)
    mask[:, :, :L, :L] = causal_mask(attention_mask, size)
    copy = torch.arange(C, device=device).repeat_interleave(size)  # which copy each packed position is
    mask[:, 0, L:, L:] = copy[:, None] == copy[None, :]  # a copy sees itself, no other copy
    before = torch.arange(L, device=device) < columns[:, :, :1].repeat_interleave(size, 1)  # (n, C·size, L)
    mask[:, 0, L:, :L] = before & attention_mask.bool()[:, None, :]  # and the real clean prefix before its block
    return packed, dict(attention_mask=mask, position_ids=positions), copy_read, columns, draw
