"""The warm start of the embedded model: supervised masked-diffusion training (LLaDA's SFT loss) on
generated solutions, so that AGRPO starts from a policy whose rewards are not all zero.

With o the G completion tokens (the solution, then EOS padding), l ~ U{1..G} of them masked
uniformly at random (x_l) and the prompt never masked:

    L_SFT(θ) = −E_l E_{x_l} [ (G/l) Σ_{masked j} log p_θ(o_j | prompt, x_l) ] / G

This is likelihood.py's ELBO estimator read at every masked position, EOS padding included, as
LLaDA's SFT trains on its padding: the model learns where completions end (ALGORITHM.md, §5).
"""

import json
import math
import os
import random

import torch
from tqdm import tqdm

import data
from likelihood import draws_logp, elbo_draws
from model import load, save
from sample import Rollout, left_pad


def sft_batch(tok, task, items, gen_length, system_prompt="", compact=True, device="cpu"):
    """Prompts (left-padded) and solutions (EOS-padded to gen_length) as a Rollout the estimators read."""
    solution = data.task(task).solution
    prompt_ids, prompt_mask = left_pad([data.build_prompt(tok, task, it, system_prompt, compact) for it in items], tok.pad_token_id)
    comps = torch.full((len(items), gen_length), tok.eos_token_id)  # the rest is EOS padding, trained too
    for i, it in enumerate(items):
        c = tok(solution(it), add_special_tokens=False).input_ids + [tok.eos_token_id]
        comps[i, : len(c)] = torch.tensor(c[:gen_length])
    ids = torch.cat([prompt_ids, comps], 1).to(device)
    attn = torch.cat([prompt_mask, torch.ones_like(comps)], 1).to(device)
    zeros = torch.zeros(len(items), gen_length, device=device)
    # the schedule fields are unused by the ELBO draws: one block, one step per token
    P = prompt_ids.shape[1]
    return Rollout(ids, attn, P, zeros.long(), zeros, zeros, gen_length, gen_length, tok.mask_token_id, tuple(tok.eos_ids))


def sft_loss(model, batch, draws):
    """L_SFT of the ELBO draws, averaged over draws, rows and completion positions."""
    return -(draws.weight[..., None] * draws_logp(model, batch, draws)).sum() / draws.read[0].numel()


def train(model, tok, task, items, *, steps, gen_length, rng, generator_for_step, lr=2e-3, batch_size=64, system_prompt="",
          compact=True, show=True):  # fmt: skip
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
        batch = sft_batch(tok, task, rng.sample(items, batch_size), gen_length, system_prompt, compact, device)
        draws = elbo_draws(batch, 1, generator_for_step(step))
        loss = sft_loss(model, batch, draws)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.zero_grad(set_to_none=True)  # a stale SFT gradient would leak into the first AGRPO step
    return model


def warm_start(model, tok, task, items, path, settings, *, steps, gen_length, seed, generator_for_step, system_prompt="",
               compact=True, show=True, write=True):  # fmt: skip
    """The embedded model after `steps` of SFT on the generated solutions of `items` that fit
    gen_length, cached as a model folder at `path` with the `settings` (a dict) that made it:
    loaded from there when they match, trained anew (and said so) when they do not; written when
    `write`, on one rank under DDP. Returns (model, path)."""
    device = next(model.parameters()).device
    recorded = os.path.join(path, "warm_start.json")
    if os.path.exists(os.path.join(path, "config.json")):
        cached = json.load(open(recorded)) if os.path.exists(recorded) else {}
        if cached == json.loads(json.dumps(settings)):  # through JSON: tuples compare as the lists stored
            if show:
                tqdm.write(f"warm start: loading cached {path}")
            return load(path, device=device)[0], path
        if show:
            changed = sorted(k for k in settings if cached.get(k) != json.loads(json.dumps(settings[k])))
            tqdm.write(f"warm start: {path} was made with other settings ({', '.join(changed) or 'unrecorded'}); training a new one")
    solution = data.task(task).solution
    if solution is None:
        raise ValueError(f"the warm start needs generated solutions: task={task!r} has none (use a pretrained model)")
    texts = [(it, solution(it)) for it in items]
    fits = [it for it, text in texts if text is not None and len(tok(text, add_special_tokens=False).input_ids) < gen_length]
    if len(fits) < 64:
        raise ValueError(
            f"--max_completion_length={gen_length}: only {len(fits)} training solutions fit (with EOS); the warm start needs 64"
        )
    model = train(model, tok, task, fits, steps=steps, gen_length=gen_length, rng=random.Random(seed + 1),
                  generator_for_step=generator_for_step, system_prompt=system_prompt, compact=compact, show=show)  # fmt: skip
    if write:
        save(model, tok, path)
        with open(recorded, "w") as f:
            json.dump(settings, f)
    return model, path
