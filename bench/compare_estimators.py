"""The paper's comparison at small scale: AGRPO's stepwise estimator against diffu-GRPO's one-step
estimator and the ELBO estimator, everything else equal.

One warm start (train.py's, shared by every run), then for each seed three
`train.py` runs that differ only in --estimator (each with --mc_samples=k forward passes per
sequence per update: the same compute), then `eval.py` on the warm start and the three trained
models at several sampling-step counts. Held-out accuracy is averaged over seeds (± standard
error over seeds).

    python bench/compare_estimators.py                       # embedded default, 3 seeds
    python bench/compare_estimators.py --quick               # a few steps: checks the pipeline (a test)
    python bench/compare_estimators.py --config=configs/tiny_sudoku.py --out_dir=runs/compare_sudoku

Writes out_dir/RESULTS.md (table and verdict), results.json and reward_curves.png.
"""

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import checkpoint  # noqa: E402

ESTIMATORS = ("stepwise", "one_step", "elbo")

ap = argparse.ArgumentParser()
ap.add_argument("--seeds", default="0,1,2")
ap.add_argument("--out_dir", default="runs/compare")
ap.add_argument("--max_steps", type=int, default=600, help="AGRPO steps per run (600 keeps 3 seeds under an hour on 2 cores)")
ap.add_argument("--eval_items", type=int, default=200)
ap.add_argument("--step_fractions", default="(0.25,0.5,1.0)")
ap.add_argument("--config", default="configs/tiny_countdown.py", help="train.py preset (task, lengths, problem generator)")
ap.add_argument("--quick", action="store_true", help="tiny budget: checks the script end to end")
args, train_args = ap.parse_known_args()  # any other --key=value goes to every train.py run

quick = ["--warm_start_steps=3", "--num_generations=4", "--per_device_train_batch_size=4"] if args.quick else []
if args.quick:
    args.max_steps, args.eval_items, args.seeds = 2, 8, "0"
seeds = [int(s) for s in args.seeds.split(",")]
out = os.path.join(ROOT, args.out_dir) if not os.path.isabs(args.out_dir) else args.out_dir


def call(script, *a):
    cmd = [sys.executable, script, *a]
    print("$", " ".join(cmd[1:]), flush=True)
    t = time.time()
    res = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if res.returncode:
        sys.exit(f"{script} failed:\n{res.stderr[-3000:]}")
    print(f"  done in {time.time() - t:.0f} s ({(time.time() - t0) / 60:.1f} min so far)", flush=True)


def mean_se(xs):
    m = sum(xs) / len(xs)
    return m, (math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs)) if len(xs) > 1 else float("nan"))


t0 = time.time()
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip() or "unknown"
common = [args.config, *quick, *train_args, "--eval_items=0"]
common += [f"--max_steps={args.max_steps}"] if args.max_steps else []
rows = []  # (seed, model, steps, accuracy)
warm = os.path.join(out, f"seed{seeds[0]}", ESTIMATORS[0], "warm_start")  # one warm start for every run
for seed in seeds:
    base = os.path.join(out, f"seed{seed}")
    for est in ESTIMATORS:
        run_dir = os.path.join(base, est)
        if (seed, est) != (seeds[0], ESTIMATORS[0]) and not os.path.exists(os.path.join(run_dir, "warm_start")):
            shutil.copytree(warm, os.path.join(run_dir, "warm_start"))
        call("train.py", *common, f"--seed={seed}", f"--estimator={est}", f"--output_dir={run_dir}", "--resume_from_checkpoint")
    models = [warm] + [os.path.join(base, e) for e in ESTIMATORS]
    labels = ["warm start", *ESTIMATORS]  # one test set (seed 0) for every seed: only training varies
    # eval.py shares the runs' task, eval length and problem generator, read from a checkpoint's resolved config
    cfg = checkpoint.read(checkpoint.newest(models[1]))["config"]
    task, eval_length = cfg["task"], cfg["eval_max_completion_length"]
    grid = [f"--task={task}", f"--gen_lengths=({eval_length},)", f"--step_fractions={args.step_fractions}"]
    grid += [f"--{k}={cfg[k]!r}" for k in ("num_range", "target_range", "sudoku_blanks", "system_prompt", "compact_prompt")]
    call("eval.py", f"--models={tuple(models)!r}", f"--labels={tuple(labels)!r}", "--seed=0", f"--eval_items={args.eval_items}",
         *grid, f"--output_dir={base}/eval")  # fmt: skip
    for r in json.load(open(f"{base}/eval/results.json"))["rows"]:
        rows.append((seed, r["model"], r["steps"], r["accuracy"]))
minutes = (time.time() - t0) / 60

# table: mean ± SE over seeds per (model, steps)
step_counts = sorted({r[2] for r in rows})
labels = ["warm start", *ESTIMATORS]
summary = {(m, s): mean_se([r[3] for r in rows if r[1] == m and r[2] == s]) for m in labels for s in step_counts}
lines = ["| model | " + " | ".join(f"m = {s}" for s in step_counts) + " |", "|---|" + "---:|" * len(step_counts)]
for m in labels:
    cells = [f"{100 * summary[m, s][0]:.1f} ± {100 * summary[m, s][1]:.1f}" for s in step_counts]
    lines.append(f"| {m} | " + " | ".join(cells) + " |")


def acc(seed, model, s):
    return next(r[3] for r in rows if r[:3] == (seed, model, s))


verdict = []  # paired by seed: runs of one seed see the same prompts, so part of their noise cancels
for other in ("one_step", "elbo"):
    for s in step_counts:
        d, se = mean_se([acc(seed, "stepwise", s) - acc(seed, other, s) for seed in seeds])
        holds = "holds" if d > 2 * se else ("is reversed" if d < -2 * se else "is not resolved (within 2 SE)")
        diff = f"stepwise − {other} = {100 * d:+.1f} ± {100 * se:.1f} points ({len(seeds)} seeds)"
        verdict.append(f"- m = {s}: {diff}: stepwise above {other} {holds}.")

# reward curves: mean over seeds, smoothed over 20 steps
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402  (for its version in the header)

fig, ax = plt.subplots(figsize=(6, 4))
for est in ESTIMATORS:
    curves = [[json.loads(line)["reward"] for line in open(os.path.join(out, f"seed{s}", est, "log.jsonl"))] for s in seeds]
    n = min(map(len, curves))
    mean = [sum(c[i] for c in curves) / len(curves) for i in range(n)]
    w = max(1, min(20, n // 5))
    smooth = [sum(mean[max(0, i - w + 1) : i + 1]) / len(mean[max(0, i - w + 1) : i + 1]) for i in range(n)]
    ax.plot(range(1, n + 1), smooth, label=est)
ax.set_xlabel("AGRPO step")
ax.set_ylabel(f"mean training reward ({len(seeds)} seeds, {w}-step average)")
ax.grid(alpha=0.3)
ax.legend()
fig.tight_layout()
fig.savefig(os.path.join(out, "reward_curves.png"), dpi=120)

text = f"""# Estimators compared on the embedded model: {task}

Command: `python bench/compare_estimators.py {" ".join(sys.argv[1:])}` at commit {commit}; {len(seeds)} seed(s),
{minutes:.0f} min on {os.cpu_count()} CPU cores (torch {torch.__version__}, {platform.processor() or platform.machine()}).
Each seed: one warm start, then three train.py runs differing only in `--estimator` (train.py's other
settings, arguments: {" ".join(common)}). Held-out greedy accuracy (%{", cell accuracy" if task == "sudoku" else ""}) on
{args.eval_items} problems, generation length {eval_length}, by sampling steps m; mean ± standard error over seeds.

{chr(10).join(lines)}

Does the paper's ordering (stepwise AGRPO above diffu-GRPO's one-step estimate, and above ELBO) hold at this scale?
Differences are paired by seed; "holds" means more than 2 standard errors above zero.

{chr(10).join(verdict)}

Training reward curves: reward_curves.png.
"""
with open(os.path.join(out, "RESULTS.md"), "w") as f:
    f.write(text)
with open(os.path.join(out, "results.json"), "w") as f:
    json.dump({"rows": rows, "minutes": minutes}, f)
print(text)
