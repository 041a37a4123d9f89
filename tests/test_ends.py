"""Every way a torchrun run of train.py ends, under DDP and FSDP with 2 gloo ranks: the run finishes; one rank
stops with a one-line error (rank 0, or rank 1 alone while rank 0 waits for it in a collective); a cluster's
SIGTERM reaches torchrun and the ranks mid-rollout, or before the first step. Each ends with its status, its
one line said once, no traceback from a rank (torchrun's own report of a failed run is torchrun's) and no hang."""

import os
import re
import signal
import subprocess
import time

import pytest
from test_fsdp import TORCHRUN
from test_train import ROOT, SMALL

ENDS = ["normal", "stop-rank0", "stop-rank1", "signal", "signal-at-start"]
HANG = 300  # seconds: an end takes 5-30 s on 2 busy cores; only a hang reaches this


def ranks_tracebacks(stderr):
    """The tracebacks in stderr other than torchrun's own report of a failed run (its frames, ending in
    torch.distributed.elastic's ChildFailedError or SignalException)."""
    blocks = re.findall(r"Traceback \(most recent call last\):\n(?:[ \t].*\n)*(.*)", stderr + "\n")
    return [last for last in blocks if not last.startswith("torch.distributed.elastic.")]


def children(pid):
    return [int(p) for p in open(f"/proc/{pid}/task/{pid}/children").read().split()]


def launch(tmp_path, parallel, end):
    """torchrun's stdout, stderr and status for one end, and the seconds it took."""
    marker = str(tmp_path / "hanging")
    faults = {  # tests/faults.py: where the run stops
        "normal": "stop_on=None",
        "stop-rank0": "stop_on=(0, 1)",  # rank 1 waits for it in the step's first collective
        "stop-rank1": "stop_on=(1, 1)",
        "signal": f"hang_rollouts=(1, {marker!r})",  # the second step's rollouts never end
        "signal-at-start": f"hang_before_training={marker!r}",  # no step begins
    }[end]
    args = [*SMALL, "--max_steps=2" if end == "signal" else "--max_steps=1", f"--output_dir={tmp_path}"]
    args += ["--fsdp"] if parallel == "fsdp" else []
    cmd = [*TORCHRUN, "--nproc_per_node", "2", "tests/faults.py", faults, "--", *args]
    t0 = time.time()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    if end.startswith("signal"):  # once every rank is where it hangs
        while (
            proc.poll() is None and time.time() < t0 + HANG and not all(os.path.exists(f"{marker}.{r}") for r in (0, 1))
        ):
            time.sleep(0.05)
        for pid in [proc.pid, *children(proc.pid)]:  # a cluster's preemption signals every process of the job
            os.kill(pid, signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=max(1, t0 + HANG - time.time()))
    except subprocess.TimeoutExpired:
        for pid in [*children(proc.pid), proc.pid]:
            os.kill(pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"hung: {HANG} s\n{err[-3000:]}")
    return out, err, proc.returncode, time.time() - t0


@pytest.mark.parametrize("end", ENDS)
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_every_end_under_torchrun(tmp_path, parallel, end):
    out, err, status, seconds = launch(tmp_path, parallel, end)
    print(f"{parallel} {end}: {seconds:.1f} s")
    stream, line = {  # the one line each end says, and where
        "normal": (out, f"step 1: checkpoint {tmp_path}/checkpoint-1"),
        "stop-rank0": (err, "config error: a one-line refusal on rank 0"),
        "stop-rank1": (err, "config error: a one-line refusal on rank 1"),
        "signal": (err, f"stopped by SIGTERM after step 1: checkpoint {tmp_path}/checkpoint-1: continue with"),
        "signal-at-start": (err, "stopped by SIGTERM before training began: nothing written"),
    }[end]
    assert stream.count(line) == 1, err[-3000:]  # said once, whichever ranks reached it
    assert "stopped by" not in err.replace(line, ""), err[-3000:]  # a rank that torchrun stopped says nothing
    assert not ranks_tracebacks(err), err[-3000:]
    # no rank aborted in gloo's threads at exit, nor hung until torchrun killed it
    assert "terminate called" not in err and "forcefully exiting via SIGKILL" not in err, err[-3000:]
    assert status == (0 if end == "normal" else 1), err[-3000:]  # torchrun's: 1 when a rank failed or it was stopped
    failed = set(re.findall(r"exitcode\s*: (-?\d+)", err))  # torchrun's report: the failed ranks' own statuses
    assert failed == ({"1"} if end.startswith("stop") else set()), err[-3000:]  # not a signal's -15 or -9
    checkpoints = sorted(f for f in os.listdir(tmp_path) if f.startswith("checkpoint-"))
    assert checkpoints == (["checkpoint-1"] if end in ("normal", "signal") else []), checkpoints


def test_a_traceback_of_a_rank_is_told_from_torchruns_report():
    report = (
        "Traceback (most recent call last):\n  File x\n    main()\ntorch.distributed.elastic.x.ChildFailedError: \n"
    )
    rank = "Traceback (most recent call last):\n  File y\nRuntimeError: Connection closed by peer\n"
    assert ranks_tracebacks(report) == [] and ranks_tracebacks(rank + report) == [
        "RuntimeError: Connection closed by peer"
    ]


def test_a_line_is_said_by_the_first_rank_only(monkeypatch):
    """Under torchrun the ranks count each stop's line in the agent's store: the first to reach it says it."""
    import datetime

    import torch.distributed as dist

    from plumbing import ddp

    assert ddp._first_to_say("stopped") and ddp._first_to_say("stopped")  # no torchrun: each says its own
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, timeout=datetime.timedelta(seconds=10))
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(store.port))
    assert ddp._first_to_say("stopped") and not ddp._first_to_say("stopped") and ddp._first_to_say("another")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")  # a restarted run says it again
    assert ddp._first_to_say("stopped")
    del store
    monkeypatch.setenv("MASTER_PORT", "1")  # the agent gone: nothing to ask, each says its own
    assert ddp._first_to_say("stopped")


def test_a_signal_raises_once():
    """torchrun passes a cluster's SIGTERM on to ranks that had it already: the second one is recorded, and does
    not cut short the end (the checkpoint, the one line) the first began."""
    from plumbing import ddp

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        state = ddp.catch_stop_signals()
        with pytest.raises(ddp.Interrupted):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs here
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)
        assert state == {"now": False, "signal": signal.SIGINT}
        with ddp.stoppable(state):  # a stop signal ends the rollouts where they stand, once
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
            raise AssertionError("not interrupted")
        assert state == {"now": False, "signal": signal.SIGTERM}
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
