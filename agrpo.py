"""The AGRPO update (ALGORITHM.md §4): group-relative advantages and the PPO-clip objective
on stepwise log-probabilities.

For a group of G completions of one prompt with rewards r_i:

    A_i = r_i − mean_group(r)                      (÷ std_group(r) with scale_std)

For each draw j (a sampled step t_j for AGRPO, a random mask for ELBO/one-step) and each token o
it reads, with ρ = exp(log π_θ − log π_old) and w_ij the draw's importance weight:

    ℓ_tok = −min(ρ A_i, clip(ρ, 1 − ε_low, 1 + ε_high) A_i) + β·k3,
    k3    = exp(r − n) − (r − n) − 1               (r: reference log-prob, n: current)
    L     = (1/N) Σ_i (1/norm_i) Σ_j w_ij Σ_{tok ∈ read_ij} ℓ_tok

norm_i is m' for AGRPO: with uniform steps w = m'/k, so L is Σ over tokens / (k·N), a per-sequence
mean over steps. `backward_draws` calls backward once per draw, so peak memory is one forward
pass whatever k is. For AGRPO, log π_old of a sampled step is the rollout's own recorded logp
(exact, no forward pass); ELBO and one-step need an old-policy pass on the same masks.
"""

import contextlib

import torch

from likelihood import draws_logp, make_draws, token_logp


def group_advantages(rewards, group_size, scale_std=False, eps=1e-4):
    """(N,) rewards in consecutive groups -> (N,) advantages. A group whose rewards are all equal
    gets exactly zero advantage (no NaN, even with scale_std)."""
    if rewards.numel() % group_size:
        raise ValueError(f"group_size={group_size} does not divide the {rewards.numel()} rewards")
    r = rewards.float().view(-1, group_size)
    adv = r - r.mean(1, keepdim=True)
    if scale_std:
        adv = adv / (r.std(1, keepdim=True, unbiased=False) + eps)
    return adv.flatten()


def k3(logp, ref_logp):
    """Unbiased, non-negative KL(π_θ || π_ref) estimator per token (Schulman's k3)."""
    d = ref_logp - logp
    return d.exp() - d - 1


def clipped_objective(logp, old_logp, advantages, eps_low=0.2, eps_high=0.2):
    """Per-token −min(ρA, clip(ρ)A) and where the clip is active (gradient zero there).
    advantages broadcast against logp."""
    ratio = (logp - old_logp).exp()
    unclipped = ratio * advantages
    clipped = ratio.clamp(1 - eps_low, 1 + eps_high) * advantages
    is_clipped = ((ratio < 1 - eps_low) & (advantages < 0)) | ((ratio > 1 + eps_high) & (advantages > 0))
    return -torch.min(unclipped, clipped), is_clipped, ratio


def draw_loss(logp, old_logp, advantages, read, weight, norm, eps_low=0.2, eps_high=0.2, beta=0.0, ref_logp=None, n_rows=None):
    """Loss of one draw: logp, old_logp, ref_logp, read (B, G); weight, norm, advantages (B,);
    n_rows: the N of the 1/N (default B; more when rows were left out). Returns (scalar loss,
    metrics summed over read tokens)."""
    # tokens not read are zeroed before exp(): a -inf there (top-k truncation) must not make NaN
    logp, old_logp = logp.masked_fill(~read, 0.0), old_logp.masked_fill(~read, 0.0)
    per_tok, is_clipped, ratio = clipped_objective(logp, old_logp, advantages[:, None], eps_low, eps_high)
    kl = torch.zeros_like(per_tok)
    if beta > 0:
        kl = k3(logp.clamp(min=-30.0), ref_logp.masked_fill(~read, 0.0).clamp(min=-30.0))
        per_tok = per_tok + beta * kl
    scale = (weight / norm)[:, None] * read  # (B, G)
    loss = (per_tok * scale).sum() / (n_rows or logp.shape[0])
    n = read.sum()
    metrics = {
        "tokens": n.item(),
        "clipped_low": (is_clipped & read & (ratio < 1)).sum().item(),  # ρ below 1 − ε with A < 0
        "clipped_high": (is_clipped & read & (ratio > 1)).sum().item(),  # ρ above 1 + ε with A > 0
        "kl": (kl * read).sum().item(),
        "ratio_dev": ((ratio - 1).abs() * read).sum().item(),
    }
    return loss, metrics


def prepare(model, rollout, estimator, k, mu, generator, scheme="low_discrepancy", ref_model=None, prompt_mask_prob=0.15):
    """Draws for all μ inner iterations, with old and reference log-probs taken before any update.
    ref_model: None (β = 0: no reference pass), a frozen copy, or a peft model whose adapters are
    disabled for the pass (the base model is the reference, at no extra memory)."""
    all_draws = [make_draws(estimator, rollout, k, generator, scheme, prompt_mask_prob) for _ in range(mu)]
    with torch.no_grad():
        if estimator == "stepwise":  # π_old of a sampled step is what the sampler recorded
            old = [rollout.logp[None].expand(d.read.shape[0], -1, -1) for d in all_draws]
        else:
            old = [draws_logp(model, rollout, d) for d in all_draws]
        ref = None
        if ref_model is not None:
            ctx = ref_model.disable_adapter() if hasattr(ref_model, "disable_adapter") else contextlib.nullcontext()
            with ctx:
                ref = [draws_logp(ref_model, rollout, d) for d in all_draws]
    return all_draws, old, ref


def backward_draws(model, rollout, draws, old_logp, advantages, ref_logp=None, eps_low=0.2, eps_high=0.2, beta=0.0, scale=1.0, sync=True,
                   skip_zero_advantage=True):  # fmt: skip
    """Forward + backward once per draw (one forward pass of memory). Gradients accumulate in
    .grad, scaled by `scale` (1/gradient-accumulation). Under DDP only the last backward syncs,
    and only if `sync`. Returns the loss value, summed metrics and the number of rows left out.

    With β = 0 a row whose advantage is exactly 0 (every row of a group whose rewards are all
    equal) has loss terms of exactly 0 and a gradient of exactly 0, so `skip_zero_advantage`
    leaves it out of the passes; the 1/N keeps counting it. Either way the rows of advantage 0 are
    not in the other rows' pass: without skipping they get a pass of their own, which adds exact
    zeros to .grad, so skipping leaves the loss and the gradient bit for bit as they were (one
    pass over all rows would differ from both by float rounding: its weight gradients sum the rows
    in another order). A synced draw whose rows are all left out still runs one row with its loss
    times 0, so every DDP rank makes the same collective calls."""
    total, metrics = 0.0, {}
    B, K = advantages.shape[0], draws.x.shape[0]
    zero = (advantages == 0) if beta == 0 else torch.zeros_like(advantages, dtype=torch.bool)
    kept, zeros = (~zero).nonzero().squeeze(1), zero.nonzero().squeeze(1)
    parts = [p for p in ([kept] if skip_zero_advantage else [kept, zeros]) if len(p)]
    passes = [(j, p) for j in range(K) for p in parts]
    if not passes and sync and hasattr(model, "no_sync"):  # nothing to run here, but the other ranks wait for this one's sync
        passes = [(K - 1, None)]
    for n, (j, part) in enumerate(passes):
        live = torch.zeros(1, dtype=torch.long, device=advantages.device) if part is None else part
        last = sync and n == len(passes) - 1
        with model.no_sync() if hasattr(model, "no_sync") and not last else contextlib.nullcontext():
            logp = token_logp(model, rollout, draws.x[j][live], draws.read[j][live], rows=live, truncate=draws.truncate)
            loss, m = draw_loss(
                logp,
                old_logp[j][live],
                advantages[live],
                draws.read[j][live],
                draws.weight[j][live],
                draws.norm[live],
                eps_low,
                eps_high,
                beta,
                None if ref_logp is None else ref_logp[j][live],
                n_rows=B,
            )
            if part is None:
                loss, m = loss * 0.0, {k: 0.0 for k in m}
            (loss * scale).backward()
        total += loss.item()
        for key, v in m.items():
            metrics[key] = metrics.get(key, 0.0) + v
    return total, metrics, B - sum(len(p) for p in parts)
