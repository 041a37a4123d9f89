"""Runs train.py with faults injected from outside, for tests/test_reliability.py:

    python tests/faults.py nan_steps=(2,3) kill_in_save=4 stop_after=2 -- [train.py arguments]

nan_steps: the advantages of these steps are NaN (one micro-batch per step); kill_in_save: SIGKILL
once the model files and half of optimizer.pt of this step's checkpoint folder are written;
disk_full: the disk fills up (ENOSPC) at the same point; stop_after: exit cleanly right after this
step's checkpoint is written; inf_weights_at: the optimizer step of this step leaves a weight infinite;
hang_rollouts=(n, marker): once n steps have their advantages, a rollout never ends (each rank first
creates the file marker.RANK); hang_before_training=marker: the same before the first step (where the
resume would be read); stop_on=(rank, n): that rank alone stops with a one-line ConfigError at its n-th
micro-batch's advantages (the others go on to wait for it in a collective); hold_shard_write=N: the background
write of checkpoint-N's shards (--fsdp) never ends, while training goes on.
"""

import ast
import errno
import io
import os
import runpy
import signal
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import torch  # noqa: E402
from torch.distributed.checkpoint import FileSystemWriter  # noqa: E402

import agrpo  # noqa: E402
import sample  # noqa: E402
from plumbing import checkpoint  # noqa: E402
from plumbing.errors import ConfigError  # noqa: E402

sep = sys.argv.index("--")
faults = {k: ast.literal_eval(v) for k, v in (a.split("=", 1) for a in sys.argv[1:sep])}

real_advantages, calls = agrpo.group_advantages, [0]


def nan_advantages(*a, **k):
    calls[0] += 1
    if (int(os.environ.get("RANK", 0)), calls[0]) == faults.get("stop_on"):
        raise ConfigError(f"a one-line refusal on rank {faults['stop_on'][0]}")
    adv = real_advantages(*a, **k)
    return adv * float("nan") if calls[0] in faults.get("nan_steps", ()) else adv


real_torch_save = torch.save


def save_interrupted_midway(obj, f, *a, **k):
    for fault in ("kill_in_save", "disk_full"):
        if fault in faults and str(f).endswith(f"checkpoint-{faults[fault]}.tmp/optimizer.pt"):
            buf = io.BytesIO()
            real_torch_save(obj, buf)
            with open(f, "wb") as out:  # the model files are written by now: the folder is half done
                out.write(buf.getvalue()[: len(buf.getvalue()) // 2])
                out.flush()
                os.fsync(out.fileno())
            if fault == "kill_in_save":
                os.kill(os.getpid(), signal.SIGKILL)
            raise OSError(errno.ENOSPC, "No space left on device")
    return real_torch_save(obj, f, *a, **k)


real_checkpoint_save = checkpoint.save


def save_then_stop(out_dir, step, *a, **k):
    path = real_checkpoint_save(out_dir, step, *a, **k)
    if step == faults["stop_after"]:
        raise SystemExit(0)
    return path


real_adamw_step, steps_taken = torch.optim.AdamW.step, [0]


def step_then_inf(self, *a, **k):
    out = real_adamw_step(self, *a, **k)
    steps_taken[0] += 1
    if steps_taken[0] == faults.get("inf_weights_at"):
        with torch.no_grad():
            p = self.param_groups[0]["params"][0]
            (p.to_local() if hasattr(p, "to_local") else p).view(-1)[0] = float("inf")  # FSDP: each rank's shard
    return out


real_generate = sample.generate


def hanging_generate(*a, **k):
    after, marker = faults["hang_rollouts"]
    if calls[0] >= after:  # a rollout that never ends: only a stop signal gets the rank out of it
        open(f"{marker}.{os.environ.get('RANK', '0')}", "w").close()
        while True:
            time.sleep(1)
    return real_generate(*a, **k)


real_write_data = FileSystemWriter.write_data


def write_data_never_ending(self, plan, planner):
    if str(self.path).endswith(f"checkpoint-{faults['hold_shard_write']}.tmp"):
        while True:  # in the writing thread: the training's own thread goes on
            time.sleep(1)
    return real_write_data(self, plan, planner)


torch.optim.AdamW.step = step_then_inf
if "hold_shard_write" in faults:
    FileSystemWriter.write_data = write_data_never_ending
if "hang_rollouts" in faults:
    sample.generate = hanging_generate
agrpo.group_advantages = nan_advantages
if "kill_in_save" in faults or "disk_full" in faults:
    torch.save = save_interrupted_midway
if "stop_after" in faults:
    checkpoint.save = save_then_stop
if "hang_before_training" in faults:
    from plumbing import lifecycle

    def hanging_resume(*a, **k):
        open(f"{faults['hang_before_training']}.{os.environ.get('RANK', '0')}", "w").close()
        while True:
            time.sleep(1)

    lifecycle.resume = hanging_resume
sys.argv = ["train.py", *sys.argv[sep + 1 :]]
runpy.run_path(os.path.join(ROOT, "train.py"), run_name="__main__")
