"""Blocks: where each row's diffusion blocks lie, and for block-diffusion models (SDAR, TraDo, the embedded
tiny_block) the two exact shortcuts of block-causal attention (ALGORITHM.md §6 shows why they are exact):
a KV cache of the finished blocks during a rollout, and every sampled step's state in one packed forward of
P + G + k·b positions, [prompt ; o ; copy_1 ; … ; copy_k] with copy_i = x_{t_i} in block b(t_i).

A bidirectional model (LLaDA, Dream) is decoded as LLaDA's generate.py does: blocks of b from the first
completion token. A block model is decoded, trained and scored in its own layout (SDAR's SFT and generate.py):
blocks of b from the row's first real token, so the prompt's last P mod b tokens share the first decoded
block, and the last block is decoded whole (up to b − 1 positions past G). Under left padding each row has its
own offset: `canvas` lays the rows out so that their blocks start at the same columns, `completion_columns`
reads the completions back. The model is called with SDAR's arguments, its block-causal mask and positions
counted from each row's first real token (plumbing/block_attention.py).
"""

import torch

from plumbing.block_attention import block_of, causal_mask, positions


def canvas(prompt_ids, attention_mask, *, completion_length, b, from_row_start, mask_id, fill_id):
    """The sampler's canvas: rows laid so that every row's first decoded block starts at one column `first`
    and all rows' blocks share columns. Returns (x, attention, first, tail, n_blocks, width): x (B, S) holds each
    prompt ending at first + tail, [MASK] on the positions the row decodes, `fill_id` past its last block;
    tail (B,) the prompt tokens in the row's first decoded block (P mod b counted from the row's start, or 0
    when blocks start at the completion); n_blocks (B,) the blocks the row decodes, ceil((tail + G) / b); width
    the completion columns of the batch, the most positions any row decodes."""
    B, P = prompt_ids.shape
    G, device = completion_length, prompt_ids.device
    real = attention_mask.long().sum(1)
    tail = real % b if from_row_start else torch.zeros_like(real)
    n_blocks = (tail + G + b - 1) // b
    # one read: the longest prompt's whole blocks come before every row's first block (first), then the widest tail
    first, widest_tail, width = torch.stack(
        [(real - tail).max(), tail.max(), completion_widths(tail, G, b).max()]
    ).tolist()
    S = first + widest_tail + width
    column = torch.arange(S, device=device)
    start = first + tail - real  # each row's first real token
    inside = (column >= first + tail[:, None]) & (column < first + n_blocks[:, None] * b)
    x = torch.full((B, S + 1), fill_id, dtype=torch.long, device=device)  # a spare last column takes the padding
    x[:, :S].masked_fill_(inside, mask_id)
    prompt_columns = start[:, None] + torch.arange(P, device=device) - (P - real[:, None])  # (B, P), padding < start
    x = x.scatter_(1, torch.where(attention_mask.bool(), prompt_columns, S), prompt_ids)[:, :S].contiguous()
    return x, (column >= start[:, None]).long(), first, tail, n_blocks, width


def completion_widths(tail, G, b):
    """(B,) the positions each row decodes, ceil((tail + G) / b)·b − tail."""
    return (tail + G + b - 1) // b * b - tail


def completion_columns(first, tail, width):
    """(B, width) the canvas column of each row's completion positions (the sampler reads them back)."""
    return first + tail[:, None] + torch.arange(width, device=tail.device)


def packed_states(ids, attention_mask, x, read, *, prompt_length, size):
    """One forward's input that scores K draws per row block by block. ids (n, L): the final sequences; x
    (K, n, L): the draws' inputs; read (K, n, W): the completion positions each scores. Every block a draw
    reads becomes one copy of that block of x, which sees the blocks of ids before it and itself (a first
    block that holds the prompt's tail copies those prompt tokens too, never read). Returns (packed ids, call
    arguments, read, columns, draw): the (n, L + C·size) input with its mask and positions; per copy
    position (n, C, size) whether it is scored and the column of ids it stands for; per copy (n, C) its
    draw. C is the most copies of any row; a row's spare copies score nothing."""
    K, n, L = x.shape
    P, device = prompt_length, x.device
    index = block_of(attention_mask, size)
    local = index[:, P:] - index[:, P : P + 1]  # (n, W) each completion position's block, from the row's first
    blocks = int(local.max()) + 1
    in_block = (local[..., None] == torch.arange(blocks, device=device)).float()  # (n, W, blocks)
    wanted = torch.einsum("knw,nwb->nkb", read.float(), in_block).flatten(1) > 0  # (row, draw·block)
    C = max(int(wanted.sum(1).max()), 1)
    order = torch.sort((~wanted).long(), dim=1, stable=True).indices[:, :C]  # each row's read (draw, block) first
    valid = wanted.gather(1, order)
    draw, block = order // blocks, (order % blocks).masked_fill(~valid, 0)
    start = L - attention_mask.long().sum(1)  # each row's first real column (left padding)
    first = start + index[:, P] * size  # each row's first completion block
    columns = first[:, None, None] + block[..., None] * size + torch.arange(size, device=device)  # (n, C, size)
    exists = columns < L  # a last block may end past the sequence (a completion not of whole blocks)
    columns = columns.clamp(max=L - 1)
    rows = torch.arange(n, device=device)[:, None, None]
    copies = x[draw[..., None], rows, columns]
    copy_read = read[draw[..., None], rows, (columns - P).clamp(min=0)] & (columns >= P) & exists & valid[..., None]

    packed = torch.cat([ids, copies.flatten(1)], 1)
    clean_positions = positions(attention_mask)
    packed_positions = torch.cat([clean_positions, clean_positions.gather(1, columns.flatten(1))], 1)
    Q = L + C * size
    mask = torch.zeros((n, 1, Q, Q), dtype=torch.bool, device=device)
    mask[:, :, :L, :L] = causal_mask(attention_mask, size)
    copy = torch.arange(C, device=device).repeat_interleave(size)  # which copy each packed position is
    mask[:, 0, L:, L:] = (copy[:, None] == copy[None, :]) & exists.flatten(1)[:, None, :]  # itself, no other copy
    before = torch.arange(L, device=device) < columns[:, :, :1].repeat_interleave(size, 1)  # (n, C·size, L)
    mask[:, 0, L:, :L] = before & attention_mask.bool()[:, None, :]  # and the real clean prefix before its block
    mask[:, 0, L:, L:] |= torch.eye(C * size, dtype=torch.bool, device=device)  # a position past the end sees itself
    return packed, dict(attention_mask=mask, position_ids=packed_positions), copy_read, columns, draw
