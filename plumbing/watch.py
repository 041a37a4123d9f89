"""Watching a run: the signs in log.jsonl's rows that it has stopped learning, each said once in one line
with the step and what to change, and its curves in one picture (curves.png in the run's folder at its
end; tools/plot.py overlays several runs, so an ablation is compared at a glance).

    sign                 when (every row of `steps` in a row)              why it matters
    flat rewards         every group's rewards equal (frac_reward_zero_std = 1)   advantages 0: no gradient
    entropy collapse     the rollouts' entropy under 1/10 of the run's first logged  the policy samples one answer
    clipping runs away   clip_frac above 1/2                                 most tokens get no gradient
    ratios drift         mean |ρ − 1| above ε                                the update left the rollouts' policy
"""

import json
import math
import os

# name: (row key, is this row a sign, steps in a row before it is said, what it means and what to change)
SIGNS = {
    "flat": (
        "frac_reward_zero_std",
        lambda value, first, epsilon: value >= 1.0,
        10,
        "every group's rewards have been equal for {steps} steps: advantages are 0 and nothing is learned; "
        "raise --num_generations or --temperature, or start from a model that sometimes succeeds",
    ),
    "entropy": (
        "entropy",
        lambda value, first, epsilon: value < first / 10,
        3,
        "the rollouts' entropy fell from {first:.3g} to {value:.3g} (under a tenth) for {steps} steps: the policy is "
        "collapsing onto few answers; lower --learning_rate, raise --temperature, or add a KL term (--beta)",
    ),
    "clip": (
        "clip_frac",
        lambda value, first, epsilon: value > 0.5,
        3,
        "more than half the tokens were clipped for {steps} steps (clip_frac {value:.3g}): most get no gradient; "
        "lower --learning_rate or --num_iterations",
    ),
    "ratio": (
        "ratio_dev",
        lambda value, first, epsilon: value > epsilon,
        3,
        "the mean |ρ − 1| has been above ε = {epsilon} for {steps} steps ({value:.3g}): the updates have left the "
        "rollouts' policy; lower --learning_rate or --num_iterations",
    ),
}


def new_watch(epsilon):
    """The state the signs are counted in: steps in a row per sign, each sign's first value, what was said."""
    return {"epsilon": epsilon, "in_a_row": dict.fromkeys(SIGNS, 0), "first": {}, "said": set()}


def warnings(watch, row):
    """One line for each sign that has just held for its number of steps in a row (each said once a run)."""
    lines = []
    for name, (key, holds, steps, text) in SIGNS.items():
        value = row.get(key)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        first = watch["first"].setdefault(name, value)
        watch["in_a_row"][name] = watch["in_a_row"][name] + 1 if holds(value, first, watch["epsilon"]) else 0
        if watch["in_a_row"][name] >= steps and name not in watch["said"]:
            watch["said"].add(name)
            detail = text.format(steps=steps, value=value, first=first, epsilon=watch["epsilon"])
            lines.append(f"warning: step {row['step']}: {detail}")
    return lines


# the panels of a run's picture: (log.jsonl key, title); held-out accuracy comes from final.json and eval rows
PANELS = (
    ("reward", "reward"),
    ("accuracy", "accuracy of the rollouts"),
    ("held_out", "held-out accuracy ± SE"),
    ("entropy", "rollout entropy (nats/token)"),
    ("kl", "KL to the reference"),
    ("clip_frac", "clip fraction"),
    ("completion_length", "completion length (tokens)"),
)


def read_run(folder):
    """(log.jsonl's rows, final.json or {}) of a run folder; a row cut off by a kill is skipped."""
    rows = []
    with open(os.path.join(folder, "log.jsonl")) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    final_path = os.path.join(folder, "final.json")
    final = json.load(open(final_path)) if os.path.isfile(final_path) else {}
    return rows, final


def held_out_points(rows, final):
    """(steps, accuracies, standard errors) of a run's held-out evaluations: before, during and after."""
    points = [(r["step"], r["eval_accuracy"], r.get("eval_accuracy_se", 0.0)) for r in rows if "eval_accuracy" in r]
    if "accuracy_before" in final:
        points.insert(0, (0, final["accuracy_before"], final.get("accuracy_before_se", 0.0)))
        points.append((final["steps"], final["accuracy_after"], final.get("accuracy_after_se", 0.0)))
    return tuple(map(list, zip(*points))) if points else ([], [], [])


def running_mean(values, window):
    """The mean of each value and the window - 1 before it (fewer at the start): a curve a reader can follow."""
    sums = [0.0]
    for v in values:
        sums.append(sums[-1] + v)
    return [(sums[i + 1] - sums[max(0, i + 1 - window)]) / min(i + 1, window) for i in range(len(values))]


def plot_runs(runs, path):
    """One picture of runs [(label, folder)]: each panel a quantity against the step, one colour a run (each
    step faint, the running mean over 1/25 of the steps drawn over it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 4
    fig, axes = plt.subplots(2, columns, figsize=(4 * columns, 6.5))
    axes = axes.flatten()
    for i, (label, folder) in enumerate(runs):
        rows, final = read_run(folder)
        color = f"C{i % 10}"
        for ax, (key, title) in zip(axes, PANELS):
            ax.set_title(title, fontsize=10)
            if key == "held_out":
                steps, accuracy, se = held_out_points(rows, final)
                ax.errorbar(steps, accuracy, yerr=se, marker="o", capsize=3, color=color, label=label)
                continue
            points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, color=color, alpha=0.3, linewidth=0.8)
                ax.plot(steps, running_mean(values, max(1, len(values) // 25)), color=color, label=label)
    for ax in axes[: len(PANELS)]:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[-1].axis("off")
    handles, labels = axes[0].get_legend_handles_labels()
    axes[-1].legend(handles, labels, loc="center", fontsize=9, title="runs")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
