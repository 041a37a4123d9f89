"""The collective timeout a save needs, derived from the checkpoint's size (plumbing/disk.py)."""

import json
import os
import sys

import warm
from test_train import ROOT

from plumbing import disk

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def test_save_minutes_covers_writing_and_hashing_at_the_stated_rate():
    """Two passes over the slowest rank's bytes (written, read back to hash) at DISK_BYTES_PER_S, rounded up to
    whole minutes, plus SLACK_MINUTES; the released 8B preset's full fine-tuning (8.016 B float32 parameters and
    AdamW's two moments, 96.2 GB): 5 minutes of disk a rank under FSDP on 8 ranks, 33 on rank 0 under DDP, past
    the 30 the key defaults to."""
    rate, slack = disk.DISK_BYTES_PER_S, disk.SLACK_MINUTES
    assert disk.save_minutes(0) == slack
    assert disk.save_minutes(30 * rate) == slack + 1  # 60 s of disk exactly: one minute
    assert disk.save_minutes(30 * rate + 1) == slack + 2
    size = 3 * 4 * 8.016e9
    assert disk.save_minutes(size / 8) == slack + 5 and disk.save_minutes(size) == slack + 33
    assert disk.cover_save(size / 8, 30) is None  # no process group here: nothing to raise
    line = disk.cover_save(size, 30)
    assert "--collective_timeout_minutes=30 is below the 34 minutes" in line and "raised to 34" in line, line


def test_a_timeout_below_a_save_is_raised(tmp_path):
    """A process group whose timeout (2 s) is shorter than rank 1 takes to reach a barrier (6 s): the barrier
    fails, unless cover_save raised the timeout to the minute a save of no bytes needs, warning on each rank."""
    for cover in ("0", "1"):
        out = tmp_path / cover
        out.mkdir()
        cmd = [*TORCHRUN, "--nproc_per_node", "2", "tests/save_timeout.py", str(out), "2", cover]
        done = warm.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV)
        assert done.returncode == 0, done.stderr[-2000:]
        rows = [json.load(open(out / f"rank{r}.json")) for r in range(2)]
        if cover == "0":
            assert rows[0]["outcome"].startswith("failed") and rows[0]["warning"] is None, rows
        else:
            assert all(r["outcome"] == "passed" and "raised to 1" in r["warning"] for r in rows), rows
