"""The paper's comparison at small scale, with a rate tuned for each estimator: AGRPO's stepwise
estimator against diffu-GRPO's one-step estimator and the ELBO estimator, all from one shipped base
model (models/), everything but the estimator and its rate equal.

1. Sweep: for each estimator and each rate in learning_rates, one train.py run (seed tune_seed), scored
   on the *validation* split (a tenth of the generated problems that neither training nor the test
   set ever contains, data.split_of). Each estimator keeps the rate with the best validation
   accuracy, averaged over the m of the grid.
2. Test: each estimator at its rate with `seeds` (fresh: not the tuning seed), plus scheme=exact
   (every one of the m steps, the sum the stepwise draws estimate) at the stepwise rate: the
   ceiling of what sampling k of the m steps costs. Scored once on the test split.

Every run is a train.py run with --mc_samples=k forward passes per sequence per update (the same
compute; exact uses m), then eval.py at each m of eval_sampling_steps. Each finished run and
evaluation is cached under output_dir/runs with the settings it was made with, so an interrupted
comparison continues where it stopped, and one called again with other settings redoes what they
change (a run trained otherwise is refused by train.py in one line: choose another output_dir).
A train.py preset given first (default configs/tiny_countdown.py) and any --key=value that is not
a key of this script go to every train.py run.

    python bench/compare_estimators.py                       # Countdown: writes bench/compare/
    python bench/compare_estimators.py configs/tiny_sudoku.py --output_dir=bench/compare_sudoku \
        --learning_rates="(1e-5,3e-5,1e-4,3e-4)"             # Sudoku: its rates sit lower
    python bench/compare_estimators.py --quick   # a few steps into bench/compare_quick: checks the pipeline (a test)

Writes output_dir/RESULTS.md (sweep, rates, test table, paired differences), results.json and
reward_curves.png.
"""

import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

from tqdm import tqdm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from common import comparison_config, run_unless_done, train_config  # noqa: E402  (bench/)

from likelihood import ESTIMATORS  # noqa: E402
from plumbing import data  # noqa: E402
from plumbing.stats import mean_se  # noqa: E402

# --- config
output_dir = "bench/compare"  # RESULTS.md, results.json, reward_curves.png, runs/ (every run and evaluation, cached)
learning_rates = (3e-5, 1e-4, 3e-4, 1e-3)  # swept for every estimator
tune_seed = 0  # the sweep's seed
seeds = (1, 2, 3)  # the test runs' seeds (not the tuning seed)
max_steps = 400  # AGRPO steps per run
eval_items = 200  # test problems scored
validation_items = 150  # validation problems scored (default Countdown: 181 exist)
eval_sampling_steps = ()  # the evaluation grid of m (() = G/4, G/2, G)
jobs = 2  # runs at a time, each on cpu_count/jobs threads
quick = False  # tiny budget: checks the script end to end
# --- end of config

args, cfg, train_args = comparison_config(__file__)  # cfg: train.py's config every run shares (eval.py needs it too)
if args.quick:
    # one rate and the tuning seed: the test runs are the sweep's runs (trained once), scored on the test split
    args.max_steps, args.eval_items, args.validation_items, args.learning_rates = 2, 8, 8, (1e-3,)
    args.seeds = (args.tune_seed,)
    train_args += ["--num_generations=4", "--per_device_train_batch_size=4"]
out = args.output_dir if os.path.isabs(args.output_dir) else os.path.join(ROOT, args.output_dir)
out += "_quick" if args.quick else ""  # a check of the pipeline never overwrites measured results
task, G = cfg["task"], cfg["max_completion_length"]  # scored at the rollouts' length and blocks
rates, seeds = args.learning_rates, args.seeds
grid_m = args.eval_sampling_steps or (G // 4, G // 2, G)
grid_m = (cfg["sampling_steps"],) if args.quick else grid_m
threads = max(1, (os.cpu_count() or 1) // args.jobs)
t0 = time.time()
trained_here = []  # the runs this call trained; the others were cached by an earlier call


def name(est, lr, seed, scheme=None):
    return f"{est}{'_' + scheme if scheme else ''}_lr{lr:g}_seed{seed}"


def scores(model, label, split):
    """{m: accuracy} of `model` on `split`, from eval.py (cached in output_dir/runs/label/eval_split)."""
    where = os.path.join(out, "runs", label, f"eval_{split}")
    knobs = [f"--{k}={cfg[k]!r}" for k in (*data.task_options(task, cfg), "system_prompt", "compact_prompt")]
    n = args.eval_items if split == "test" else args.validation_items
    eval_args = [
        f"--models=({model!r},)",
        f"--labels=({label!r},)",
        f"--task={task}",
        f"--eval_split={split}",
        "--seed=0",
        f"--eval_items={n}",
        f"--max_completion_length=({G},)",
        f"--block_length={cfg['block_length']}",
        f"--sampling_steps={tuple(grid_m)!r}",
        *knobs,
        f"--output_dir={where}",
    ]
    run_unless_done(threads, where, eval_args, "eval.py", *eval_args)
    return {r["sampling_steps"]: r["accuracy"] for r in json.load(open(os.path.join(where, "results.json")))["rows"]}


def job(spec):
    """Train (or finish) one run, then score it: (spec, {m: accuracy})."""
    est, lr, seed, scheme, split = spec
    label = name(est, lr, seed, scheme)
    run_dir = os.path.join(out, "runs", label)
    run_args = [*train_args, f"--estimator={est}", f"--learning_rate={lr}", f"--seed={seed}"]
    run_args += [*([f"--scheme={scheme}"] if scheme else []), f"--max_steps={args.max_steps}", "--eval_items=0"]
    # a finished run is reused only if trained with these settings (presets read as they are now); else train.py
    # continues it, or refuses in one line a change of what it was trained with
    run_args += [f"--output_dir={run_dir}", "--resume_from_checkpoint"]
    if run_unless_done(threads, run_dir, train_config(run_args), "train.py", *run_args):
        trained_here.append(label)
    return spec, scores(run_dir, label, split)


def train_minutes(label):
    """Minutes a run's AGRPO steps took, from its log (each step once, a resumed run's too)."""
    return sum(json.loads(x)["seconds"] for x in open(os.path.join(out, "runs", label, "log.jsonl"))) / 60


def run_all(specs, desc):
    """Every spec's job, --jobs at a time; the first failure stops the rest (the runs finished so far stay cached)."""
    results = {}
    with ThreadPoolExecutor(args.jobs) as pool, tqdm(total=len(specs), desc=desc) as bar:
        for future in as_completed([pool.submit(job, s) for s in specs]):
            try:
                spec, acc = future.result()
            except RuntimeError as e:
                pool.shutdown(cancel_futures=True)
                sys.exit(str(e))
            results[spec] = acc
            bar.update()
            bar.set_postfix(minutes=f"{(time.time() - t0) / 60:.0f}")
    return results


def mean(xs):
    return sum(xs) / len(xs)


# 1. sweep on validation
base = cfg["model_name_or_path"]
sweep = run_all([(e, lr, args.tune_seed, None, "validation") for e in ESTIMATORS for lr in rates], "sweep (validation)")
best = {
    e: max(rates, key=lambda lr: mean(list(sweep[e, lr, args.tune_seed, None, "validation"].values())))
    for e in ESTIMATORS
}

# 2. test: each estimator at its rate, fresh seeds; the exact ceiling at the stepwise rate
finals = [(e, best[e], s, None, "test") for e in ESTIMATORS for s in seeds]
finals += [("stepwise", best["stepwise"], s, "exact", "test") for s in seeds]
test = run_all(finals, "test runs")
base_scores = {split: scores(base, "base", split) for split in ("validation", "test")}
minutes = (time.time() - t0) / 60
labels = list(dict.fromkeys(name(e, lr, s, scheme) for e, lr, s, scheme, _ in [*sweep, *test]))  # a run once
steps_minutes = sum(train_minutes(label) for label in labels)

# tables
ms = sorted(grid_m)
rows_of = {e: [test[e, best[e], s, None, "test"] for s in seeds] for e in ESTIMATORS}
rows_of["exact (stepwise rate)"] = [test["stepwise", best["stepwise"], s, "exact", "test"] for s in seeds]
unit = "cell accuracy" if task == "sudoku" else "accuracy"
sweep_lines = [
    "| estimator | " + " | ".join(f"lr {lr:g}" for lr in rates) + " | chosen |",
    "|---|" + "---:|" * len(rates) + "---|",
]
for e in ESTIMATORS:
    cells = [f"{100 * mean(list(sweep[e, lr, args.tune_seed, None, 'validation'].values())):.1f}" for lr in rates]
    sweep_lines.append(f"| {e} | " + " | ".join(cells) + f" | {best[e]:g} |")


def positions(label):
    """Forward token positions per completion and step of a run (its log), or None for a log without them."""
    rows = [json.loads(x) for x in open(os.path.join(out, "runs", label, "log.jsonl"))]
    return mean([r["positions"] for r in rows]) if all("positions" in r for r in rows) else None


m_train = cfg["sampling_steps"]
test_lines = [
    "| model | rate | " + " | ".join(f"m = {m}" for m in ms) + " | positions per completion-step | "
    f"points above base at m = {m_train} per 1,000 of them |",
    "|---|---|" + "---:|" * (len(ms) + 2),
]
test_lines.append("| base | | " + " | ".join(f"{100 * base_scores['test'][m]:.1f}" for m in ms) + " | | |")
for label, runs in rows_of.items():
    rate = best["stepwise" if label.startswith("exact") else label]
    by_m = [mean_se([r[m] for r in runs], float("nan")) for m in ms]  # one seed: no error to show (nan)
    cells = [f"{100 * mu:.1f} ± {100 * se:.1f}" for mu, se in by_m]
    est, scheme = ("stepwise", "exact") if label.startswith("exact") else (label, None)
    used = [positions(name(est, rate, s, scheme)) for s in seeds]
    if None in used or m_train not in ms:
        cells += ["", ""]
    else:
        gain = 100 * (mean([r[m_train] for r in runs]) - base_scores["test"][m_train])
        cells += [f"{mean(used):.0f}", f"{1000 * gain / mean(used):+.2f}"]
    test_lines.append(f"| {label} | {rate:g} | " + " | ".join(cells) + " |")
verdict = []  # paired by seed: runs of one seed see the same prompts, so part of their noise cancels
for other in [e for e in ESTIMATORS if e != "stepwise"] + ["exact (stepwise rate)"]:
    for m in ms:
        d, se = mean_se([a[m] - b[m] for a, b in zip(rows_of["stepwise"], rows_of[other])], float("nan"))
        word = "above" if d > 2 * se else ("below" if d < -2 * se else "level with (within 2 SE)")
        verdict.append(
            f"- m = {m}: stepwise − {other} = {100 * d:+.1f} ± {100 * se:.1f} points: stepwise is {word} {other}."
        )

# reward curves of the test runs: mean over seeds, smoothed
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402  (for its version in the header)

fig, ax = plt.subplots(figsize=(6, 4))
for label, (e, scheme) in {**{e: (e, None) for e in ESTIMATORS}, "exact": ("stepwise", "exact")}.items():
    curves = [
        [json.loads(x)["reward"] for x in open(os.path.join(out, "runs", name(e, best[e], s, scheme), "log.jsonl"))]
        for s in seeds
    ]
    n = min(map(len, curves))
    avg = [mean([c[i] for c in curves]) for i in range(n)]
    w = max(1, min(20, n // 5))
    ax.plot(
        range(1, n + 1), [mean(avg[max(0, i - w + 1) : i + 1]) for i in range(n)], label=f"{label} (lr {best[e]:g})"
    )
ax.set_xlabel("AGRPO step")
ax.set_ylabel(f"training reward ({len(seeds)} seeds, {w}-step mean)")
ax.grid(alpha=0.3)
ax.legend()
fig.tight_layout()
fig.savefig(os.path.join(out, "reward_curves.png"), dpi=120)

commit = (
    subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    or "unknown"
)
text = f"""# Estimators compared with a rate each: {task}

Command: `python bench/compare_estimators.py {" ".join(sys.argv[1:])}` at commit {commit}; {minutes:.0f} min \
wall-clock on
{os.cpu_count()} CPU cores ({args.jobs} runs at a time, {threads} thread(s) each; torch {torch.__version__},
{platform.processor() or platform.machine()}), in which {len(trained_here)} of the {len(labels)} runs were trained \
(the others were
cached by earlier calls). The AGRPO steps of all {len(labels)} runs took {steps_minutes:.0f} min in all (their logs). \
Base model
`{base}`; every run: `train.py {" ".join(train_args)} --max_steps={args.max_steps}` with its estimator, rate and seed.
Greedy {unit} (%) on {args.eval_items} problems, generation length {G}, by sampling steps m (the test table; the
sweep's count is in its heading).

## 1. Sweep (seed {args.tune_seed}; validation split, {args.validation_items} problems: {unit} averaged over \
m = {", ".join(map(str, ms))})

{chr(10).join(sweep_lines)}

## 2. Test split, each estimator at its chosen rate (mean ± standard error over seeds {", ".join(map(str, seeds))})

{chr(10).join(test_lines)}

Differences paired by seed ("above" / "below": more than 2 standard errors from zero):

{chr(10).join(verdict)}

Training reward curves of the test runs: reward_curves.png.
"""
with open(os.path.join(out, "RESULTS.md"), "w") as f:
    f.write(text)
with open(os.path.join(out, "results.json"), "w") as f:
    swept = {
        name(e, lr, args.tune_seed): sweep[e, lr, args.tune_seed, None, "validation"]
        for e in ESTIMATORS
        for lr in rates
    }
    json.dump(
        {
            "sweep": swept,
            "best": best,
            "test": rows_of,
            "base": base_scores,
            "minutes": minutes,
            "steps_minutes": steps_minutes,
        },
        f,
    )
print(text)
