"""The warm start of the embedded model: supervised masked-diffusion training (LLaDA's SFT loss) on
generated solutions, so that AGRPO starts from a policy whose rewards are not all zero.

With o the G completion tokens (the solution, then EOS padding), l ~ U{1..G} of them masked
uniformly at random (x_l) and the prompt never masked:

    L_SFT(θ) = −E_l E_{x_l} [ (G/l) Σ_{masked j} log p_θ(o_j | prompt, x_l) ] / G

This is likelihood.py's ELBO estimator read at every masked position, EOS padding included, as
LLaDA's SFT trains on its padding: the model learns where completions end.
"""

import math

import torch
from tqdm import tqdm

import data
from likelihood import draws_logp, elbo_draws
from sample import Rollout, left_pad

TASKS = ("countdown", "sudoku")  # the tasks whose generator also gives solutions


def solution_text(task, item, think=False):
    if task == "countdown":
        return data.countdown_solution_text(item, think=think)
    return data.sudoku_solution_text(item)


def sft_batch(tok, task, items, gen_length, system_prompt="", compact=True, think=False, device="cpu"):
    """Prompts (left-padded) and solutions (EOS-padded to gen_length) as a Rollout the estimators read."""
    prompt_ids, prompt_mask = left_pad([data.build_prompt(tok, task, it, system_prompt, compact) for it in items], tok.pad_token_id)
    comps = torch.full((len(items), gen_length), tok.eos_token_id)  # the rest is EOS padding, trained too
    for i, it in enumerate(items):
        c = tok(solution_text(task, it, think), add_special_tokens=False).input_ids + [tok.eos_token_id]
        comps[i, : len(c)] = torch.tensor(c[:gen_length])
    ids = torch.cat([prompt_ids, comps], 1).to(device)
    attn = torch.cat([prompt_mask, torch.ones_like(comps)], 1).to(device)
    zeros = torch.zeros(len(items), gen_length, device=device)
    # the schedule fields are unused by the ELBO draws: one block, one step per token
    P = prompt_ids.shape[1]
    return Rollout(ids, attn, P, zeros.long(), zeros, zeros, gen_length, gen_length, tok.mask_token_id, tuple(tok.eos_ids))


def sft_loss(model, batch, draws):
    """L_SFT of the ELBO draws, averaged over draws, rows and completion positions."""
    return -(draws.weight[..., None] * draws_logp(model, batch, draws)).sum() / draws.read.numel()


def train(model, tok, task, items, *, steps, lr, batch_size, gen_length, rng, generator_for_step, system_prompt="",
          compact=True, think=False, show=True):  # fmt: skip
    """`steps` AdamW steps of L_SFT on batches drawn by `rng` (a random.Random) from `items`, whose
    solutions must fit gen_length with their EOS; warmup over 50 steps, cosine decay.
    generator_for_step(step) gives the torch.Generator of that step's masks. Returns the model
    with no gradient left in .grad."""
    device = next(model.parameters()).device
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.99))
    model.train()
    bar = tqdm(range(steps), desc="warm start (SFT)", disable=not show)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / steps))
        batch = sft_batch(tok, task, rng.sample(items, batch_size), gen_length, system_prompt, compact, think, device)
        draws = elbo_draws(batch, 1, generator_for_step(step), read_all=True)
        loss = sft_loss(model, batch, draws)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.zero_grad(set_to_none=True)  # a stale SFT gradient would leak into the first AGRPO step
    return model
