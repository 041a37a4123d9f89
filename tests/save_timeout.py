"""Run under torchrun by tests/test_disk.py: a process group made with a timeout shorter than rank 1 takes to
reach a barrier (its disk, say), then disk.cover_save raised or not, then the barrier:

    torchrun --nproc_per_node 2 tests/save_timeout.py OUT SECONDS COVER    # OUT/rank{r}.json: the barrier's outcome
"""

import datetime
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import torch.distributed as dist  # noqa: E402

from plumbing import disk  # noqa: E402

out, seconds, cover = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "1"
dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=seconds))
rank = dist.get_rank()
warning = disk.cover_save(0, seconds / 60) if cover else None  # a checkpoint of no bytes: SLACK_MINUTES
if rank == 1:
    time.sleep(3 * seconds)  # longer than the group's timeout, far shorter than a minute
try:
    dist.barrier()
    outcome = "passed"
except RuntimeError as e:
    outcome = f"failed: {str(e)[:200]}"
with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
    json.dump(dict(outcome=outcome, warning=warning), f)
os._exit(0)  # a group whose barrier timed out cannot be destroyed cleanly
