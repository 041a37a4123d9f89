"""Training with threshold rollouts against fixed-step rollouts, on the embedded default: held-out
accuracy against the rollout forward passes spent to reach it.

Two train.py runs from the shipped base model (models/tiny-countdown), identical but for the
rollout sampler: fixed-step low-confidence unmasking (m = sampling_steps of the preset) and
threshold unmasking with τ (each completion in its own number of passes, at least one per block: m = G, one
position a step at least).
Every save_steps steps a checkpoint is scored on the test set with both decoders (greedy fixed m,
greedy τ), so each run is read with the decoder it trained with and with the other one. The x axis
is the rollout forward passes per completion summed over the steps so far (log.jsonl's
rollout_passes): the rollout's compute, which dominates a step on a real model.

    python bench/compare_threshold.py                             # writes bench/compare_threshold/
    python bench/compare_threshold.py --quick  # a few steps into bench/compare_threshold_quick: checks the pipeline

A train.py preset given first (default configs/tiny_countdown.py) and any --key=value that is not a
key of this script go to both train.py runs. Runs and evaluations are cached under output_dir/runs
with the settings they were made with, so an interrupted comparison continues and one called again with
other settings redoes what they change (a run trained otherwise is refused by train.py in one line).
"""

import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from common import comparison_config, run_unless_done, train_config  # noqa: E402  (bench/)

from plumbing import data  # noqa: E402

# --- config
output_dir = "bench/compare_threshold"  # RESULTS.md, accuracy_vs_rollout_passes.png, runs/ (cached)
threshold = 0.9  # τ of the threshold run and of its decoding
max_steps = 1000  # AGRPO steps per run
save_steps = 100  # steps between checkpoints, each one scored
eval_items = 200  # test problems scored
quick = False  # a few steps: checks the pipeline
# --- end of config

args, cfg, train_args = comparison_config(__file__)  # cfg: train.py's config both runs share
if args.quick:
    args.max_steps, args.save_steps, args.eval_items = 2, 2, 8
    train_args += ["--num_generations=4", "--per_device_train_batch_size=4"]
out = args.output_dir if os.path.isabs(args.output_dir) else os.path.join(ROOT, args.output_dir)
out += "_quick" if args.quick else ""  # a check of the pipeline never overwrites measured results
G, m, tau = cfg["max_completion_length"], cfg["sampling_steps"], args.threshold
RUNS = {  # the threshold run at m = G: at least one position a step, as eval.py's τ rows decode
    "fixed": [f"--unmasking={cfg['unmasking']}"],
    "threshold": ["--unmasking=threshold", f"--threshold={tau}", f"--sampling_steps={G}"],
}
threads = max(1, (os.cpu_count() or 1) // 2)
t0 = time.time()


def score(model, where):
    """{'fixed': (accuracy, passes), 'threshold': (accuracy, passes)} of one model on the test set."""
    eval_args = [
        f"--models=({model!r},)",
        "--labels=('m',)",
        f"--task={cfg['task']}",
        f"--eval_items={args.eval_items}",
        "--seed=0",
        f"--max_completion_length=({G},)",
        f"--block_length={cfg['block_length']}",
        f"--sampling_steps=({m},)",
        "--unmasking=low_confidence",  # a fixed-m row and a τ row (at m = G), whichever way the run rolled out
        f"--thresholds=({tau},)",
        *(f"--{k}={cfg[k]!r}" for k in (*data.task_options(cfg["task"], cfg), "compact_prompt")),
        f"--output_dir={where}",
    ]
    run_unless_done(threads, where, eval_args, "eval.py", *eval_args)
    rows = json.load(open(f"{where}/results.json"))["rows"]
    return {
        ("threshold" if r.get("threshold") is not None else "fixed"): (r["accuracy"], r["sampling_steps"]) for r in rows
    }


def train_and_score(run):
    run_dir = os.path.join(out, "runs", run)
    run_args = [*train_args, *RUNS[run], f"--max_steps={args.max_steps}", f"--save_steps={args.save_steps}"]
    run_args += ["--eval_items=0", f"--save_total_limit={args.max_steps // args.save_steps + 1}"]
    run_args += [f"--output_dir={run_dir}", "--resume_from_checkpoint"]  # train.py refuses a changed run
    run_unless_done(threads, run_dir, train_config(run_args), "train.py", *run_args)
    passes = [json.loads(x)["rollout_passes"] for x in open(f"{run_dir}/log.jsonl")]
    points = [(0, 0.0, base)]
    for step in range(args.save_steps, args.max_steps + 1, args.save_steps):
        points.append((step, sum(passes[:step]), score(f"{run_dir}/checkpoint-{step}", f"{run_dir}/eval_{step}")))
    return run, points


base = score(cfg["model_name_or_path"], f"{out}/runs/eval_base")  # step 0 of both runs
with ThreadPoolExecutor(2) as pool:
    results = dict(pool.map(train_and_score, RUNS))
minutes = (time.time() - t0) / 60

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

fig, ax = plt.subplots(figsize=(6.5, 4.2))
for i, run in enumerate(RUNS):
    for decoding, style in (("fixed", "-o"), ("threshold", "--s")):
        pts = results[run]
        label = f"trained {run}, decoded {'m = ' + str(m) if decoding == 'fixed' else 'τ = ' + str(tau)}"
        ax.plot(
            [p[1] for p in pts], [100 * p[2][decoding][0] for p in pts], style, color=f"C{i}", label=label, markersize=4
        )
ax.set_xlabel("rollout forward passes per completion, summed over steps")
ax.set_ylabel(f"held-out greedy accuracy (%), {args.eval_items} problems")
ax.grid(alpha=0.3)
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(f"{out}/accuracy_vs_rollout_passes.png", dpi=120)

lines = [
    f"| run | step | rollout passes so far | per rollout | accuracy, m = {m} (%) | accuracy, τ = {tau} (%) | τ: "
    "passes per item |",
    "|---|---:|---:|---:|---:|---:|---:|",
]
for run, pts in results.items():
    for step, spent, s in pts:
        per = f"{spent / step:.2f}" if step else ""
        accs = f"{100 * s['fixed'][0]:.1f} | {100 * s['threshold'][0]:.1f}"
        lines.append(f"| {run} | {step} | {spent:,.0f} | {per} | {accs} | {s['threshold'][1]:.2f} |")
commit = (
    subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    or "unknown"
)
text = f"""# Threshold rollouts against fixed-step rollouts: {cfg["task"]}

Command: `python bench/compare_threshold.py {" ".join(sys.argv[1:])}` at commit {commit}; {minutes:.0f} min \
wall-clock on
{os.cpu_count()} CPU cores (2 runs at a time, {threads} thread(s) each; torch {torch.__version__}, \
{platform.machine()}).
Both runs: `train.py {" ".join(train_args)} --max_steps={args.max_steps}` from `{cfg["model_name_or_path"]}`, one with
fixed-step rollouts (m = {cfg["sampling_steps"]}, {cfg["unmasking"]}), one with threshold rollouts (τ = {tau}). Each \
checkpoint scored
greedily on {args.eval_items} test problems (G = {G}) with fixed steps (m = {m}) and with threshold decoding (τ = \
{tau}).

{chr(10).join(lines)}

Plot: accuracy_vs_rollout_passes.png.
"""
with open(f"{out}/RESULTS.md", "w") as f:
    f.write(text)
with open(f"{out}/results.json", "w") as f:
    json.dump({"runs": results, "minutes": minutes}, f)
print(text)
