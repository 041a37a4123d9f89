"""Processes under torchrun: one per GPU (NCCL), gloo ranks on CPU, or one plain process. This file owns a
process's life, from its start to its end, for every script (train.py, eval.py): the process group started and
destroyed (`processes`), the stop signals (SIGINT, SIGTERM) and the point where every rank obeys them together
(`stoppable`, `stop_if_signalled`), and how each rank ends (`rank_end`: a one-line stop said once, no traceback
from a rank whose peer stopped, no abort at exit). Then the collectives the scripts use besides DDP's own
gradient all-reduce (agrpo.py), and the seeded generators that make every random choice the same in any
partition of the work over ranks."""

import atexit
import contextlib
import datetime
import hashlib
import os
import signal
import sys

import torch
import torch.distributed as dist

from plumbing.errors import config_errors
from plumbing.fsdp import is_sharded


class Interrupted(Exception):
    """SIGINT (Ctrl-C) or SIGTERM (a cluster's preemption); args[0]: the signal's number."""


@contextlib.contextmanager
def processes(sharded=False, timeout_minutes=30, stopped="before anything was written"):
    """A script's processes, from start to a normal end: SIGINT and SIGTERM caught first (catch_stop_signals),
    the process group started (init_processes), and destroyed when the body ends normally. Whatever holds the
    group (DDP's reducer) is dropped by the body before it ends: freed after the group, its teardown can hang.
    A stop signal that leaves the body (nothing saved) stops in one line: "stopped by SIGTERM ", then `stopped`.
    Yields (distributed, rank, world, device, stop: catch_stop_signals' state)."""
    stop = catch_stop_signals()
    try:
        with config_errors():  # --fsdp outside torchrun
            distributed, rank, world, device = init_processes(sharded=sharded, timeout_minutes=timeout_minutes)
        yield distributed, rank, world, device, stop
    except Interrupted as e:
        raise SystemExit(f"stopped by {signal.Signals(e.args[0]).name} {stopped}") from None
    if dist.is_initialized():
        dist.destroy_process_group()


def init_processes(sharded=False, timeout_minutes=30):
    """(distributed, rank, world, device). Each rank's GPU is made current: NCCL's collectives run on it.
    sharded (FSDP): a process group even for one process, which torchrun must have started.
    timeout_minutes: how long a rank waits in a collective for the others (a checkpoint's write included:
    NCCL's own default, 10 minutes, ends the run when one rank's disk is slow) before the run stops."""
    ddp = int(os.environ.get("WORLD_SIZE", 1)) > 1 or sharded
    if sharded and "RANK" not in os.environ:
        raise ValueError("--fsdp runs under torchrun: torchrun --nproc_per_node N train.py ... --fsdp")
    if ddp:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    rank, world = (dist.get_rank(), dist.get_world_size()) if ddp else (0, 1)
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        torch.cuda.set_device(device)
    return ddp, rank, world, device


def catch_stop_signals():
    """SIGINT and SIGTERM are recorded in state["signal"]; they raise Interrupted where they arrive only
    while state["now"] is set (before training, and inside `stoppable`). Elsewhere the weights are
    changing or the ranks are in a collective together, and the signal waits for `stop_if_signalled`.
    A signal raises once: the next ones (torchrun passes a cluster's SIGTERM on to ranks that had it
    already) are only recorded, and do not cut short the end the first one began."""
    state = {"now": True, "signal": None}

    def handler(signum, frame):
        state["signal"] = signum
        if state["now"]:
            state["now"] = False
            raise Interrupted(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, handler)
    return state


@contextlib.contextmanager
def stoppable(state):
    """Work that runs no collective and changes no weight (the rollouts): a stop signal ends it where it
    stands, however long it would take, and stays recorded for `stop_if_signalled`."""
    state["now"] = True
    try:
        yield
    except Interrupted:
        pass
    finally:
        state["now"] = False


def stop_if_signalled(state):
    """Interrupted on every rank when a signal reached any of them: all stop at one point, where the
    checkpoint of the last finished step can be written (under FSDP every rank takes part)."""
    if any_rank(state["signal"] is not None):
        raise Interrupted(state["signal"] or signal.SIGTERM)


@contextlib.contextmanager
def rank_end():
    """Under torchrun, how a rank ends: a one-line stop (SystemExit with a message) is said by the first rank
    to say it, once however many ranks reach it; a rank whose collective fails because another rank has
    stopped (that rank says why) exits with status 1 and no traceback of its own. Every rank then ends as
    multiprocessing's workers do, with os._exit once Python has printed what it prints at exit (atexit runs
    it): gloo's worker threads free a finished collective's tensors a moment after it returns, taking the GIL
    to do so, and one that asks for it while the interpreter is torn down aborts the process ("terminate called
    without an active exception"). destroy_process_group does not stop those threads while a sharded model
    holds the group."""
    if "RANK" not in os.environ:  # one plain process: nothing to end but itself
        yield
        return
    status = [1]  # what the process exits with: Python's own status for how main() ended
    atexit.register(_exit_now, status)
    try:
        yield
        status[0] = 0
    except SystemExit as e:
        status[0] = e.code if isinstance(e.code, int) else 0 if e.code is None else 1  # a message: 1, as Python
        if isinstance(e.code, str) and not _first_to_say(e.code):
            raise SystemExit(1) from None
        raise
    except KeyboardInterrupt:
        status[0] = 128 + signal.SIGINT  # the shell's status for a process Ctrl-C ended
        raise
    except RuntimeError as e:  # gloo: "Connection closed by peer"; NCCL: a DistBackendError
        gone = isinstance(e, (dist.DistNetworkError, dist.DistBackendError)) or any(
            words in str(e) for words in ("closed by peer", "reset by peer", "Broken pipe")
        )
        if not (gone and dist.is_initialized() and dist.get_world_size() > 1):
            raise
        raise SystemExit(1) from None


def _first_to_say(line):
    """Whether no other rank of this torchrun run has said `line`: each rank counts it in torchrun's own store,
    which its agent holds for as long as any rank lives (a stop every rank reaches, a refusal of the config
    they share, is said once). Where there is no such store, every rank says its own."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return True
    try:
        store = dist.TCPStore(
            os.environ["MASTER_ADDR"],
            int(os.environ["MASTER_PORT"]),
            is_master=False,
            timeout=datetime.timedelta(seconds=3),  # the agent answers at once while it lives
            wait_for_workers=False,
        )
        key = f"said/{os.environ.get('TORCHELASTIC_RESTART_COUNT', 0)}/{hashlib.sha256(line.encode()).hexdigest()}"
        return store.add(key, 1) == 1
    except (RuntimeError, OSError, ValueError, KeyError):  # the agent gone: say it
        return True


def _exit_now(status):
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed pipe (train.py | head) must not keep the process alive
            stream.flush()
    os._exit(status[0])


def rank():
    """This process's rank (one process: 0)."""
    return dist.get_rank() if dist.is_initialized() else 0


def world():
    """The number of ranks (one process: 1)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def barrier():
    """Every rank waits for the others here (one process: nothing to wait for)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def first_problem(problem):
    """The first rank's problem (a string) that is not None, or None, on every rank (one process: problem)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return problem
    return next((p for p in gather([problem], dist.get_world_size()) if p is not None), None)


def gather(items, world):
    """Every rank's list of items, on every rank, rank 0's first (one process: the list itself)."""
    if world == 1 or not dist.is_initialized():
        return items
    shards = [None] * world
    dist.all_gather_object(shards, items)
    return [item for shard in shards for item in shard]


def mean_over_ranks(values, device):
    """The mean of a list of numbers over the ranks (one process: the numbers themselves)."""
    t = torch.tensor(values, device=device)  # NCCL reduces GPU tensors only
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return t.tolist()


def every_rank(flag):
    """Whether `flag` holds on every rank (one process: flag itself)."""
    return bool(_reduced(float(flag), dist.ReduceOp.MIN))


def least_over_ranks(t):
    """A tensor's elementwise least value over the ranks, reduced on its device (no read to the host)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return t


def any_rank(flag):
    """Whether `flag` holds on some rank (one process: flag itself)."""
    return bool(_reduced(float(flag), dist.ReduceOp.MAX))


def most_over_ranks(n):
    """The largest of the ranks' numbers n (one process: n)."""
    return int(_reduced(n, dist.ReduceOp.MAX))


def _reduced(value, op):
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return value
    t = torch.tensor(float(value), device="cuda" if dist.get_backend() == "nccl" else "cpu")  # NCCL: GPU tensors
    dist.all_reduce(t, op=op)
    return t.item()


def seeded(seed, *key, device="cpu"):
    """A generator seeded by (seed, *key): the same on every rank and in every partition of work."""
    digest = hashlib.sha256(repr((seed, *key)).encode()).hexdigest()  # not hash(): salted per process
    return torch.Generator(device=device).manual_seed(int(digest[:15], 16))


def passes_to_fill(model, passes, fill):
    """Zero-loss forward-backward passes this rank runs after its `passes` (agrpo.accumulate_gradients),
    given its own `fill`. DDP all-reduces once, on the last backward: `fill` as it is. FSDP gathers and
    reduces at every forward and backward: each rank runs as many passes as the busiest."""
    return most_over_ranks(passes + fill) - passes if is_sharded(model) else fill
