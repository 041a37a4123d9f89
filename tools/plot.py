"""Overlay training runs in one picture: reward, rollout accuracy, held-out accuracy with its standard error,
entropy, KL, clip fraction and completion length against the step, one colour a run, named in the legend by
its folder (or --labels). train.py draws each run's own curves.png the same way at its end.

    python tools/plot.py runs/uniform runs/low_discrepancy                  # runs.png here
    python tools/plot.py runs/a runs/b --labels=uniform,entropy --out=ablation.png
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as tools/*.py

from plumbing.watch import plot_runs  # noqa: E402


def main(argv):
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        raise SystemExit(0 if argv else 2)
    options = dict(a.split("=", 1) if "=" in a else (a, "") for a in argv if a.startswith("--"))
    runs = [a for a in argv if not a.startswith("--")]
    if unknown := sorted(set(options) - {"--labels", "--out"}):
        raise SystemExit(f"plot: unknown option {unknown[0]} (--labels=a,b and --out=PATH are known)")
    names = [os.path.basename(os.path.abspath(r)) for r in runs]
    labels = options["--labels"].split(",") if "--labels" in options else names
    if len(labels) != len(runs):
        raise SystemExit(f"plot: --labels names {len(labels)} runs, {len(runs)} were given")
    for run in runs:
        if not os.path.isfile(os.path.join(run, "log.jsonl")):
            raise SystemExit(f"plot: {run} is not a training run (no log.jsonl)")
    out = options.get("--out", "runs.png")
    try:
        print(f"plot: {plot_runs(list(zip(labels, runs)), out)}")
    except OSError as e:
        raise SystemExit(f"plot: cannot write {out} ({e.strerror})") from None


if __name__ == "__main__":
    main(sys.argv[1:])
