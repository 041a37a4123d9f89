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

Everything here builds masks and inputs; the model is called through model.selected_logits with
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


def cached_call(ids, attention_mask, lo, hi, cache, size, store=False):
    """The model arguments that run positions [lo, hi) of `ids` over a cache holding [0, lo): one
    block, or (lo = 0) the prompt's prefill, block-causal in blocks of `size`; `store` appends their
    keys and values to the cache."""
    n = len(ids)
    mask = causal_mask(attention_mask[:, :hi], size) if lo == 0 else cached_mask(attention_mask, lo, hi)
    positions = torch.arange(lo, hi, device=ids.device).expand(n, -1)
    return ids[:, lo:hi], dict(attention_mask=mask, position_ids=positions, past_key_values=cache, store_kv=store)


def step_blocks(unmask_step, steps, size):
    """(B, m) the completion block (counted from the completion's start) each step of each row filled.
    Raises ValueError unless every row filled its blocks one after another, which the packed
    forward's exactness rests on."""
    B, G = unmask_step.shape
    block = (torch.arange(G, device=unmask_step.device) // size).expand(B, -1)
    filled = unmask_step.clamp(min=0)
    first = torch.full((B, G // size), steps, device=filled.device).scatter_reduce(1, block, filled, "amin")
    last = torch.zeros((B, G // size), dtype=torch.long, device=filled.device).scatter_reduce(1, block, filled, "amax")
    if bool((last[:, :-1] > first[:, 1:]).any()):
        raise ValueError("a rollout whose blocks were not filled one after another cannot be scored block by block")
    out = torch.zeros((B, steps), dtype=torch.long, device=filled.device)
    return out.scatter_(1, filled, block)


def packed_states(ids, attention_mask, unmask_step, prompt_length, steps, mask_id, size):
    """One forward's inputs for the states x_t of K steps per row: ids (n, L) the finished sequences,
    steps (n, K) the steps. Returns (ids, call arguments, read, columns): the packed (n, L + K·size)
    input, its mask and positions, which copy positions hold a token of their step (unmask_step == t)
    and the column of ids each copy position stands for, both (n, K, size)."""
    n, L = ids.shape
    P, K = prompt_length, steps.shape[1]
    all_blocks = step_blocks(unmask_step, int(unmask_step.max()) + 1 if unmask_step.numel() else 1, size)
    block = all_blocks.gather(1, steps.clamp(max=all_blocks.shape[1] - 1))  # (n, K)
    offsets = P + block[..., None] * size + torch.arange(size, device=ids.device)  # (n, K, size) absolute columns
    rows = torch.arange(n, device=ids.device)[:, None, None]
    step_of = unmask_step[rows, offsets - P]
    copies = ids[rows, offsets].masked_fill(step_of >= steps[..., None], mask_id)  # x_t inside block b(t)
    read = step_of == steps[..., None]
    packed = torch.cat([ids, copies.flatten(1)], 1)
    positions = torch.cat([torch.arange(L, device=ids.device).expand(n, -1), offsets.flatten(1)], 1)

    Q = L + K * size
    mask = torch.zeros((n, 1, Q, Q), dtype=torch.bool, device=ids.device)
    mask[:, :, :L, :L] = causal_mask(attention_mask, size)
    copy = torch.arange(K, device=ids.device).repeat_interleave(size)  # which copy each packed position is
    mask[:, 0, L:, L:] = copy[:, None] == copy[None, :]  # a copy sees itself, no other copy
    before = torch.arange(L, device=ids.device)[None, None] < (P + block * size).repeat_interleave(size, 1)[..., None]
    mask[:, 0, L:, :L] = before & attention_mask.bool()[:, None, :]  # and the real clean prefix before its block
    call = dict(attention_mask=mask, position_ids=positions)
    return packed, call, read, offsets
