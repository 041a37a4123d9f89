"""What a run records, step by step: one row of means per step in output_dir/log.jsonl (always),
the completions every `log_completions_steps` in completions.jsonl, and the same rows in
tensorboard or wandb when `report_to` names one (scalars, and the completions as a table/text).
And what eval.py writes besides its records: the results table and the accuracy-against-steps plot.
"""

import json
import os

import torch

from plumbing.ddp import mean_over_ranks
from plumbing.errors import first_line

REPORTERS = ("none", "tensorboard", "wandb")
SHOWN = ("reward", "reward_std", "accuracy", "loss", "clip_frac", "entropy", "seconds")  # on the progress bar


def step_means(cfg, batches, loss, metrics, device, positions=0, *, in_text, equal_groups):
    """The logged means of a step over every rank's completions and tokens; positions: the token
    positions this rank's forward passes ran in the step (rollouts, likelihood passes, update); in_text: per
    micro-batch (B, G) the completion tokens a reward reads (likelihood.completion_mask); equal_groups: per
    micro-batch whether each group's rewards are all equal (agrpo.equal_groups)."""
    rewards = torch.cat([b.rewards for b in batches])
    accuracy = torch.cat([b.accuracy for b in batches])
    group_std = rewards.view(-1, cfg.num_generations).std(1)
    in_text = torch.cat([mask.flatten() for mask in in_text]).cpu()
    entropy = torch.cat([b.rollout.entropy.flatten() for b in batches]).cpu()
    metrics = {
        k: 0.0 for k in ("tokens", "kl", "clipped_low", "clipped_high", "ratio_dev")
    } | metrics  # all rows left out: none
    tokens = max(1, metrics["tokens"])
    stats = {
        "reward": rewards.mean(),
        "reward_std": group_std.mean(),
        # groups whose rewards are all equal: their rows have advantage exactly 0 (left out at β = 0)
        "frac_reward_zero_std": torch.cat(equal_groups).float().mean(),
        "accuracy": accuracy.mean(),
        "completion_length": torch.cat([b.lengths for b in batches]).float().mean(),
        "rollout_passes": torch.cat([b.rollout.passes for b in batches])
        .float()
        .mean(),  # forward passes per completion
        "entropy": entropy[in_text].mean(),  # of the sampling distribution, per completion token
        "loss": loss,
        "kl": metrics["kl"] / tokens,
        "clip_frac": (metrics["clipped_low"] + metrics["clipped_high"]) / tokens,
        "clip_low": metrics["clipped_low"] / tokens,
        "clip_high": metrics["clipped_high"] / tokens,
        "ratio_dev": metrics["ratio_dev"] / tokens,  # mean |ρ − 1| over the tokens read
        "frac_rows_left_out": sum(len(b.advantages) - len(b.rows) for b in batches)
        / len(rewards),  # advantage 0: no passes
        "frac_prompts_cut": sum(b.prompts_cut for b in batches) / len(rewards),  # longer than max_prompt_length
        "positions": positions / len(rewards),  # forward token positions per completion: the step's compute
    }
    return dict(zip(stats, mean_over_ranks([float(v) for v in stats.values()], device)))


def read_once(values):
    """{name: a number or a one-element tensor} as floats, every tensor read to the host in one transfer (a read
    per value would wait for the device once each)."""
    names = [k for k, v in values.items() if torch.is_tensor(v)]
    read = {}
    if names:
        device = values[names[0]].device
        read = dict(zip(names, torch.stack([values[k].detach().to(device, torch.float64) for k in names]).tolist()))
    return {k: read[k] if k in read else float(v) for k, v in values.items()}


def completion_rows(tok, step, batches):
    """One JSON row per completion of this rank: what log_completions_steps writes."""
    rows = []
    for b in batches:
        prompts = tok.batch_decode(b.rollout.ids[:, : b.rollout.prompt_length], skip_special_tokens=True)
        for p, t, r, a in zip(prompts, b.texts, b.rewards.tolist(), b.advantages.tolist()):
            rows.append({"step": step, "prompt": p, "completion": t, "reward": r, "advantage": a})
    return rows


def record(log_path, completions_path, reporter, row, completions):
    """A step's row and completions: appended to their JSONL files and sent to the reporter."""
    append_jsonl(log_path, [row])
    append_jsonl(completions_path, completions)
    report(reporter, row, row["step"], completions)


def append_jsonl(path, rows):
    """Append rows; a full or unwritable disk stops the run in one line (a resume drops a cut-off line)."""
    try:
        with open(path, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    except OSError as e:
        raise SystemExit(
            f"cannot write {path} ({e.strerror}): free space or fix the folder, then --resume_from_checkpoint"
        ) from None


def open_reporter(report_to, output_dir, config):
    """The handle rows are reported to: None, a tensorboard SummaryWriter (output_dir/tensorboard),
    or a wandb run (output_dir/wandb; WANDB_MODE=offline works without a network) named by
    WANDB_NAME or output_dir, in the project WANDB_PROJECT or "agrpo" (wandb's own variables)."""
    name = os.environ.get("WANDB_NAME") or os.path.basename(os.path.abspath(output_dir))
    project = os.environ.get("WANDB_PROJECT") or "agrpo"
    if report_to == "tensorboard":
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(os.path.join(output_dir, "tensorboard"))
    if report_to == "wandb":
        import wandb

        try:
            return wandb.init(project=project, name=name, config=config, dir=output_dir)
        except Exception as e:  # no login, no network: wandb raises its own types
            raise SystemExit(
                f"--report_to=wandb: {first_line(e)} (`wandb login`, or WANDB_MODE=offline to log locally)"
            ) from None
    return None


def report(handle, row, step, completions=()):
    """The scalars of a step's row under train/, and its completions as a table."""
    if handle is None:
        return
    scalars = {f"train/{k}": v for k, v in row.items() if k != "step" and isinstance(v, (int, float))}
    if hasattr(handle, "add_scalar"):  # tensorboard
        for k, v in scalars.items():
            handle.add_scalar(k, v, step)
        if completions:
            lines = ["| prompt | completion | reward | advantage |", "|---|---|---:|---:|"]
            cell = lambda t: str(t).replace("|", "\\|").replace("\n", " ")  # noqa: E731
            lines += [
                f"| {cell(c['prompt'])} | {cell(c['completion'])} | {c['reward']:.3g} | {c['advantage']:.3g} |"
                for c in completions
            ]
            handle.add_text("completions", "\n".join(lines), step)
        handle.flush()
    else:  # wandb
        import wandb

        if completions:
            columns = ["prompt", "completion", "reward", "advantage"]
            scalars["completions"] = wandb.Table(columns=columns, data=[[c[k] for k in columns] for c in completions])
        handle.log(scalars, step=step)


def close_reporter(handle):
    if handle is not None:
        (handle.close if hasattr(handle, "add_scalar") else handle.finish)()


def results_table(rows, baseline=None):
    """eval.py's table; with a baseline (the first model's name), each other model's paired change against it."""
    columns = ["model", "task", "gen length", "decoding", "steps", "accuracy (%)", "± SE"]
    columns += [f"vs {baseline} (points)"] if baseline else []
    columns += ["mean length", "seconds"]
    lines = ["| " + " | ".join(columns) + " |", "|---|---|---|" + "---:|" * (len(columns) - 3)]
    for r in rows:
        how = "fixed" if r.get("threshold") is None else f"τ = {r['threshold']}"
        cells = [r["model"], r["task"], r["max_completion_length"], how, f"{r['sampling_steps']:.3g}"]
        cells += [f"{100 * r['accuracy']:.1f}", f"{100 * r['se']:.1f}"]
        if baseline:
            cells.append(f"{100 * r['change']:+.1f} ± {100 * r['change_se']:.1f}" if "change" in r else "")
        cells += [f"{r['mean_length']:.1f}", f"{r['seconds']:.1f}"]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def plot_results(rows, path, title):
    """Accuracy against sampling steps (forward passes), one line per model (and generation length)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    model_names = list(dict.fromkeys(r["model"] for r in rows))
    lengths = sorted({r["max_completion_length"] for r in rows})
    for name in model_names:  # colour = model, line style = generation length
        for G in lengths:
            color, style = f"C{model_names.index(name) % 10}", ["-", "--", ":", "-."][lengths.index(G) % 4]
            label = f"{name} (G={G})" if len(lengths) > 1 else name
            for thresholded in (False, True):  # fixed steps: a line; threshold decoding: squares at its mean steps
                line = [
                    r
                    for r in rows
                    if (r["model"], r["max_completion_length"]) == (name, G)
                    and (r.get("threshold") is not None) == thresholded
                ]
                if not line:
                    continue
                line.sort(key=lambda r: r["sampling_steps"])
                x, y, se = (
                    [f(r) for r in line]
                    for f in (lambda r: r["sampling_steps"], lambda r: 100 * r["accuracy"], lambda r: 100 * r["se"])
                )
                ax.errorbar(
                    x,
                    y,
                    yerr=se,
                    marker="s" if thresholded else "o",
                    capsize=3,
                    color=color,
                    linestyle="none" if thresholded else style,
                    label=f"{label}, threshold" if thresholded else label,
                )
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("sampling steps m")
    ax.set_ylabel("accuracy (%) ± SE")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# the script
