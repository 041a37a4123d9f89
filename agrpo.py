"""The AGRPO update (ALGORITHM.md §4): group-relative advantages and the PPO-clip objective on the
log-probabilities of likelihood.py's draws. For a group of R = num_generations completions with rewards r_i,
and each draw j (a step, or a mask) with importance weight w_ij:

    A_i   = r_i − mean_group(r)                                 (÷ the group's std with scale_rewards)
    ℓ_tok = −min(ρ A_i, clip(ρ, 1 − ε_low, 1 + ε_high) A_i) + β·ρ·k3,   ρ = exp(log π_θ − log π_old)
    k3    = exp(Δ) − Δ − 1                                       (Δ = log π_ref − log π_θ of the token)
    loss  = (1/N) Σ_i (1/norm_i) Σ_j w_ij Σ_{tok ∈ read_ij} ℓ_tok

`accumulate_gradients` calls backward once per micro-batch and draw, so peak memory is one forward pass of a
micro-batch whatever k is; on a block model once per micro-batch, its rows' draws packed into one forward (or
`draws_per_pass` draws at a time), whose memory grows by b positions a draw (ALGORITHM.md §6).
"""

import contextlib
from dataclasses import dataclass

import torch

from likelihood import draw_passes, draws_logp, make_draws, token_logp


def group_advantages(rewards, num_generations, scale_rewards=False, eps=1e-4):
    """(N,) rewards in consecutive groups -> (N,) advantages. A group whose rewards are all equal
    gets exactly zero advantage, whatever the rewards (a float mean of thirds is not exactly a
    third), and no NaN with scale_rewards."""
    if rewards.numel() % num_generations:
        raise ValueError(f"num_generations={num_generations} does not divide the {rewards.numel()} rewards")
    r = rewards.float().view(-1, num_generations)
    adv = r - r.mean(1, keepdim=True)
    if scale_rewards:  # TRL's scale_rewards: the sample standard deviation
        adv = adv / (r.std(1, keepdim=True) + eps)
    return adv.masked_fill(equal_groups(rewards, num_generations)[:, None], 0.0).flatten()


def equal_groups(rewards, num_generations):
    """(N,) rewards in consecutive groups -> (N / num_generations,) whether each group's rewards are
    all equal (in float32, as group_advantages reads them): the groups that teach nothing."""
    r = rewards.float().view(-1, num_generations)
    return r.amax(1) == r.amin(1)


def k3(logp, ref_logp):
    """Unbiased, non-negative KL(π_θ || π_ref) estimator per token (Schulman's k3) for a token drawn from π_θ."""
    d = ref_logp - logp
    return d.exp() - d - 1


def kl_term(logp, old_logp, ref_logp):
    """ρ·k3, as the release: the tokens were drawn from π_old, and E_{π_old}[ρ·k3] = KL(π_θ || π_ref) with ρ
    carrying gradient, so the gradient is the KL's (plain k3's follows ∇KL(π_ref || π_θ)). Log-probs are
    clamped at −30: a token the current or reference policy all but excludes must not make exp() overflow."""
    logp, ref_logp = logp.clamp(min=-30.0), ref_logp.clamp(min=-30.0)
    return (logp - old_logp).exp() * k3(logp, ref_logp)


def clipped_objective(logp, old_logp, advantages, *, epsilon=0.2, epsilon_high=0.2):
    """Per-token −min(ρA, clip(ρ)A), where the clip is active (gradient zero there), and ρ itself.
    advantages broadcast against logp."""
    ratio = (logp - old_logp).exp()
    unclipped = ratio * advantages
    clipped = ratio.clamp(1 - epsilon, 1 + epsilon_high) * advantages
    is_clipped = ((ratio < 1 - epsilon) & (advantages < 0)) | ((ratio > 1 + epsilon_high) & (advantages > 0))
    return -torch.min(unclipped, clipped), is_clipped, ratio


def draw_loss(
    logp, old_logp, advantages, read, weight, norm, *, epsilon=0.2, epsilon_high=0.2, beta=0.0, ref_logp=None,
    n_rows=None,
):  # fmt: skip
    """Loss of draws computed together: logp, old_logp, ref_logp, read (K, B, G); weight (K, B);
    norm, advantages (B,); n_rows: the N of the 1/N (default B; more when rows were left out).
    Returns (scalar loss, metrics summed over read tokens, as tensors: nothing is read to the host here, between
    a forward and its backward)."""
    # tokens not read are zeroed before exp(): a -inf there (top-k truncation) must not make NaN
    logp, old_logp = logp.masked_fill(~read, 0.0), old_logp.masked_fill(~read, 0.0)
    per_tok, is_clipped, ratio = clipped_objective(
        logp, old_logp, advantages[:, None], epsilon=epsilon, epsilon_high=epsilon_high
    )
    kl = torch.zeros_like(per_tok)
    if beta > 0:
        kl = kl_term(logp, old_logp, ref_logp.masked_fill(~read, 0.0))
        per_tok = per_tok + beta * kl
    scale = (weight / norm)[..., None] * read  # (K, B, G)
    loss = (per_tok * scale).sum() / (n_rows or logp.shape[-2])
    with torch.no_grad():
        metrics = {
            "tokens": read.sum(),
            "clipped_low": (is_clipped & read & (ratio < 1)).sum(),  # ρ below 1 − ε with A < 0
            "clipped_high": (is_clipped & read & (ratio > 1)).sum(),  # ρ above 1 + ε with A > 0
            "kl": (kl * read).sum(),
            "ratio_dev": ((ratio - 1).abs() * read).sum(),
        }
    return loss, metrics


def prepare(model, rollout, *, estimator, k, mu, generator, scheme="low_discrepancy", ref_model=None, draws_per_pass=0):
    """Draws for all μ inner iterations, with old and reference log-probs taken before any update.
    ref_model: None (β = 0: no reference pass), a frozen copy, or a peft model whose adapters are
    disabled for the pass (the base model is the reference, at no extra memory). draws_per_pass: on
    a block model, the most draws one packed forward scores (0: all)."""
    all_draws = [make_draws(estimator, rollout, k, generator, scheme) for _ in range(mu)]
    for d in all_draws:
        d.per_pass = draws_per_pass
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


@dataclass
class MicroBatch:
    """One micro-batch of whole groups after the rollout phase: what the update reads."""

    rollout: object  # sample.Rollout: completions and their trajectories
    texts: list  # the completions as the reward read them
    rewards: torch.Tensor  # (B,) r_i
    accuracy: torch.Tensor  # (B,) the task's reported accuracy
    lengths: torch.Tensor  # (B,) completion tokens up to the first EOS
    advantages: torch.Tensor  # (B,) A_i, group-relative
    rows: torch.Tensor  # the rows the update runs (kept_rows)
    draws: list  # per inner iteration: likelihood.Draws (sampled steps, or masks)
    old_logp: list  # per inner iteration: log π_old of the tokens each draw reads
    ref_logp: list | None  # per inner iteration: log π_ref (β > 0)
    prompts_cut: int = 0  # rows whose prompt was cut to max_prompt_length


def kept_rows(advantages, beta):
    """The rows an update runs. With β = 0 a row of advantage 0 (a group whose rewards are all equal)
    has a loss and a gradient of exactly 0, so it is left out; the 1/N of the loss still counts it."""
    keep = advantages != 0 if beta == 0 else torch.ones_like(advantages, dtype=torch.bool)
    return keep.nonzero().squeeze(1)


def accumulate_gradients(
    model, batches, it, *, epsilon, epsilon_high, beta, amp=contextlib.nullcontext, fill_to_ranks=None
):
    """One inner iteration's gradient in .grad: for every micro-batch and draw j (or the draws that
    share a forward), the clipped loss of the tokens read and its backward, scaled by
    1/micro-batches. Returns (loss, metrics), tensors summed on the model's device (train.update reads them once
    a step). A last micro-batch without rows adds one zero-loss pass
    (`zero_loss`), so AdamW always sees a gradient, if only zeros; fill_to_ranks(passes, fill) (under
    torchrun, plumbing/ddp.passes_to_fill) gives the zero-loss passes that let ranks take part in each
    other's collectives."""
    loss_sum, metrics = 0.0, {}
    plans = [draw_passes(model, b.draws[it]) if len(b.rows) else [] for b in batches]  # one draw a forward, or many
    fill = 0 if len(batches[-1].rows) else 1
    if fill_to_ranks is not None:
        fill = fill_to_ranks(sum(map(len, plans)), fill)
    for a, (b, passes) in enumerate(zip(batches, plans)):
        d, rows, total = b.draws[it], b.rows, 0.0
        for n, js in enumerate(passes):
            # nanoGPT's DDP switch: gradients are all-reduced on the last backward only
            model.require_backward_grad_sync = not fill and a == len(batches) - 1 and n == len(passes) - 1
            # draws js of these rows: the tokens read, their weights, and the log-probs taken before any update
            read, weight, adv, norm = d.read[js][:, rows], d.weight[js][:, rows], b.advantages[rows], d.norm[rows]
            old = b.old_logp[it][js][:, rows]
            ref = None if b.ref_logp is None else b.ref_logp[it][js][:, rows]
            with amp():
                logp = draws_logp(model, b.rollout, d, js, rows, chunk=len(rows))  # log π_θ(o_j | x_t)
                loss, these = draw_loss(
                    logp, old, adv, read, weight, norm, epsilon=epsilon, epsilon_high=epsilon_high, beta=beta,
                    ref_logp=ref, n_rows=len(b.advantages),
                )  # fmt: skip
                (loss * (1.0 / len(batches))).backward()
            # float64 sums on the device, as Python's float sums of the values read one by one would be
            total = total + loss.detach().double()
            metrics = {k: metrics.get(k, 0) + v.double() for k, v in these.items()}
        loss_sum += total / len(batches)
    for n in range(fill):
        model.require_backward_grad_sync = n == fill - 1
        with amp():
            zero_loss(model, batches[-1], it).backward()
    return loss_sum, metrics


def zero_loss(model, b, it):
    """0 × one row's log-prob: a backward that puts zeros in .grad and takes part in DDP's all-reduce."""
    d, row = b.draws[it], torch.zeros(1, dtype=torch.long, device=b.advantages.device)
    return token_logp(model, b.rollout, d.x[-1][row], d.read[-1][row], row, truncate=d.truncate).sum() * 0.0
