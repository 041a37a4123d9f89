"""A torchrun rank that ends the way a sharded run does: the process group destroyed while something still
holds it, the last collective's tensor freed by gloo's worker thread, which needs the GIL for it. argv[1]: how
main() ends (ok, exit-3, message, error). Under ddp.rank_end the rank exits with Python's status for it."""

import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from plumbing import ddp  # noqa: E402

held = None  # what a sharded model is to the process group: a reference destroy_process_group cannot drop


def main(how):
    global held
    dist.init_process_group("gloo")
    sys.setswitchinterval(1e3)  # the main thread keeps the GIL: gloo's thread frees the tensor only at the exit
    dist.all_reduce(torch.ones(1000), async_op=True)  # the tensor and its work dropped here: gloo's thread frees them
    start = time.time()
    while time.time() - start < 0.3:  # the all-reduce finishes meanwhile; the GIL is not given up
        pass
    held = dist.group.WORLD
    dist.destroy_process_group()
    if how == "exit-3":
        sys.exit(3)
    if how == "message":
        raise SystemExit("stopped: a one-line reason")
    if how == "error":
        raise ValueError("a bug")
    print("done", flush=True)


with ddp.rank_end():
    main(sys.argv[1])
