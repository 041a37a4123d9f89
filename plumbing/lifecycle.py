"""A training run's lifecycle: its output folder made its own, its checkpoints (written, resumed), and how it
ends. Its processes are ddp.py's (started, stopped, ended); Ctrl-C or SIGTERM (a cluster's preemption) ends it
at a point every rank reaches together (ddp.stop_if_signalled), with the checkpoint of the last finished step
and one line naming it."""

import contextlib
import fcntl
import json
import os
import random
import shutil
import signal
import socket
from types import SimpleNamespace

import torch
import torch.distributed as dist
from tqdm import tqdm

from plumbing import checkpoint, ddp, disk, logs, outdir, restore, watch
from plumbing.errors import ConfigError
from plumbing.model import resolved
from plumbing.stats import mean_se, paired_change

RUN_FILES = ("log.jsonl", "completions.jsonl", "final.json", "curves.png")  # what a run writes beside its checkpoints


@contextlib.contextmanager
def training_run(output_dir, resume, overwrite, sharded, timeout_minutes=30, need_bytes=0):
    """The run, from its processes (ddp.processes: one per GPU under torchrun, gloo ranks on CPU, or one
    process; stop signals caught) to its end; output_dir locked by rank 0 (claim, with need_bytes free) before
    any heavy work. Yields a namespace: distributed, rank, world, device, master, stop, amp() and log(); the
    loop sets save(step), finished (step, torch and Python RNG states) and last_saved, which a stop uses, and
    bar, reporter and train_model (DDP's wrapper), which the end closes; train.py sets the digests of the
    training and held-out items and the accuracy before training, which checkpoints record."""
    with ddp.processes(sharded, timeout_minutes, "before training began: nothing written") as started:
        distributed, rank, world, device, stop = started
        run = SimpleNamespace(distributed=distributed, rank=rank, world=world, device=device, stop=stop)
        run.master = rank == 0
        run.save = run.finished = run.bar = run.reporter = run.train_model = None  # the loop sets them
        run.train_items = run.held_out_items = run.accuracy_before = None  # train.py sets them
        run.last_saved = 0
        run.amp = lambda: (  # bf16 autocast of every forward and backward on CUDA (the sampler's noise stays float64)
            torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else contextlib.nullcontext()
        )
        run.log = lambda *a: run.master and a[0] is not None and tqdm.write(" ".join(str(x) for x in a))
        _lock = claim(output_dir, resume, overwrite, need_bytes) if run.master else None  # held until the end
        if distributed:
            dist.barrier()  # the other ranks start once the folder is this run's
        try:
            yield run
        except ddp.Interrupted as e:
            if run.save is None:  # before the first step: nothing to save (ddp.processes says so)
                raise
            checkpoint.finish()  # FSDP: a checkpoint still being written is finished first (it may be the last step's)
            path = save_after_stop(output_dir, run) if run.master or sharded else None  # FSDP: every rank writes
            path = checkpoint.finish() or path
            logs.close_reporter(run.reporter)
            run.bar.close()
            how = f"checkpoint {path}: continue with --resume_from_checkpoint" if path else "no checkpoint written yet"
            name = signal.Signals(e.args[0]).name
            raise SystemExit(f"stopped by {name} after step {run.finished[0]}: {how}" if run.master else 1) from None
        checkpoint.finish()  # FSDP: the last checkpoint's write, which the final evaluation overlapped
        logs.close_reporter(run.reporter)
        run.train_model = None  # the DDP reducer holds the process group: it goes first (freed after, it can hang)


def save(cfg, run, model, opt, sched, tok, nonfinite, step):
    """Rank 0 writes checkpoint-{step}; under FSDP every rank writes its own shards of it, all at once."""
    if run.master or cfg.fsdp:
        kw = dict(base=resolved(cfg.model_name_or_path), counters=nonfinite, tok=tok, world=run.world, sharded=cfg.fsdp)
        kw |= dict(items=(run.train_items, run.held_out_items), accuracy_before=run.accuracy_before)
        return checkpoint.save(cfg.output_dir, step, model, opt, sched, vars(cfg), cfg.save_total_limit, **kw)


def disk_footprint(cfg, run, model, start, total_steps):
    """One line: the size of a checkpoint (the trained tensors and AdamW's two moments, as they are held:
    float32 master weights under FSDP), how many the run keeps, and the free space of output_dir's disk.
    A run whose first checkpoint cannot fit stops here (it would stop at its first save, its steps lost);
    one whose kept checkpoints cannot all fit is warned (it stops at the save that fills the disk, with its
    newest checkpoint whole: free space, or lower --save_total_limit, before then). A collective timeout too short
    for the slowest rank's write is raised, with a warning line first (disk.cover_save)."""
    size = 3 * sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    saves = len([s for s in range(start + 1, total_steps + 1) if s % cfg.save_steps == 0 or s == total_steps])
    existing = len(checkpoint.names(cfg.output_dir))
    kept = min(cfg.save_total_limit, existing + saves)
    # a save writes the new one before it removes the oldest: one more for a moment
    needed = max(0, min(cfg.save_total_limit + 1, existing + saves) - existing) * size
    free = shutil.disk_usage(cfg.output_dir).free
    gib = lambda n: f"{n / 2**30:.3g} GiB"  # noqa: E731
    line = f"checkpoints: ~{gib(size)} each × {kept} kept = {gib(kept * size)}; {gib(free)} free on {cfg.output_dir}"
    if not ddp.every_rank(saves == 0 or size <= free):
        raise ConfigError(f"{line}: not even one checkpoint fits. Free space or choose another --output_dir")
    # the slowest writer: under FSDP each rank writes its share (in the background), else rank 0 the whole
    timeout = disk.cover_save(size / run.world if cfg.fsdp else size, cfg.collective_timeout_minutes)
    if needed > free:
        line = f"warning: {line}: the run stops at the save that fills the disk. Free space or lower --save_total_limit"
    return f"{timeout}\n{line}" if timeout else line


def resume(cfg, run, model, opt, sched, jsonl, may_change):
    """(first step, non-finite counters): (0, none) for a new run; else those of the checkpoint restored
    (every key but those in may_change as the run's)."""
    if not cfg.resume_from_checkpoint:
        return 0, {}
    only = cfg.resume_from_checkpoint if isinstance(cfg.resume_from_checkpoint, str) else None
    args = (cfg.output_dir, model, opt, sched, vars(cfg), may_change, jsonl, run.master, run.log, only, run.world)
    return restore.resume(*args, train_items=run.train_items)


def accuracy_before(cfg, run, evaluate):
    """Each held-out item's accuracy before training: on a resume, those its checkpoint recorded, if measured on
    the same held-out items (a resume at 8B need not decode them all again); else evaluate()."""
    path = cfg.resume_from_checkpoint
    path = (path if isinstance(path, str) else checkpoint.newest(cfg.output_dir)) if path else None
    try:
        state = checkpoint.read(path, verify=True) if path else {}  # hashed once: the resume reuses it
    except ConfigError:
        state = {}  # a damaged checkpoint: the resume passes it over
    scores = state.get("accuracy_before")  # one per held-out item (a single number in older checkpoints)
    recorded = state.get("held_out_items") == run.held_out_items and isinstance(scores, list) and len(scores) > 0
    if not ddp.every_rank(recorded and all(type(s) is float and 0 <= s <= 1 for s in scores)):
        return evaluate()  # the ranks evaluate together, or none does
    mean = sum(scores) / len(scores)
    run.log(f"held-out accuracy before AGRPO: {mean:.3f} (measured at the start of the run, {path})")
    return scores


def report_final(cfg, run, before, after, steps):
    """The run's result, in a line and in final.json: the held-out accuracy before and after training, and the
    standard error of the change, paired (each item's score before and after, the same items)."""
    (_, before_se), (_, after_se) = mean_se(before), mean_se(after)
    n, (before, after, se) = len(before), paired_change(before, after)
    points = f"{100 * (after - before):+.1f} ± {100 * se:.1f} points"
    run.log(f"held-out accuracy: {before:.3f} -> {after:.3f} ({points}; ± a standard error, paired over {n} items)")
    if run.master:
        result = dict(accuracy_before=before, accuracy_after=after, change_se=se, eval_items=n, steps=steps)
        result |= dict(accuracy_before_se=before_se, accuracy_after_se=after_se)  # each alone, for a plot's error bars
        with open(os.path.join(cfg.output_dir, "final.json"), "w") as f:
            json.dump(result, f)


def draw_curves(output_dir):
    """curves.png in the run's folder (watch.plot_runs), or why it was not drawn: a run's end never fails on it."""
    try:
        name = os.path.basename(os.path.abspath(output_dir))
        return watch.plot_runs([(name, output_dir)], os.path.join(output_dir, "curves.png"))
    except (ImportError, OSError, ValueError) as e:
        return f"not drawn ({type(e).__name__}: {str(e)[:120]})"


def halt(output_dir, step, why, fix):
    """Stop in one line, nothing of this step logged or saved. Every rank calls it: a checkpoint still being
    written in the background (FSDP) is finished first, so the one it names is the last one saved."""
    checkpoint.finish()
    last = checkpoint.newest(output_dir) or "none written yet"
    raise SystemExit(f"stopping at step {step}: {why}. Last checkpoint: {last}. {fix}")


def claim(out_dir, resume, overwrite, need_bytes=0):
    """Make out_dir this run's own, before any heavy work: an exclusive lock held for the life of
    the process (a second run on the folder stops, naming the holder), and a folder that already
    holds a run (checkpoints or log.jsonl) is continued only with `resume`, emptied with
    `overwrite` (its run files only: checkpoints and RUN_FILES), or refused;
    outdir.claim's checks first (no working folder, shipped model or file; writable; room for need_bytes).
    Returns the open lock file (keep it referenced)."""
    outdir.claim(out_dir, "the run", need_bytes=need_bytes)
    try:
        lock = open(os.path.join(out_dir, ".lock"), "a+")
    except OSError as e:  # a file of that name, no permission, a path that cannot exist
        raise ConfigError(f"--output_dir={out_dir} cannot hold the run ({e.strerror})") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.seek(0)
        holder = lock.read().strip() or "another process"
        raise ConfigError(
            f"--output_dir={out_dir} is in use by a running train.py ({holder}): wait for it or choose another folder"
        ) from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"pid {os.getpid()} on {socket.gethostname()}")
    lock.flush()
    previous = checkpoint.names(out_dir) + [f for f in RUN_FILES if os.path.exists(os.path.join(out_dir, f))]
    if previous and not resume:
        if not overwrite:
            raise ConfigError(
                f"--output_dir={out_dir} holds a run ({', '.join(previous[:3])}): "
                "--resume_from_checkpoint continues it, --overwrite_output_dir starts over"
            )
        for f in previous:
            path = os.path.join(out_dir, f)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    return lock


def save_after_stop(out_dir, run):
    """After a stop signal: the checkpoint of the last finished step, written with the RNG state as it
    was then (unless this run's last checkpoint, at step run.last_saved, is of that step), or the newest
    one, or None."""
    done, torch_rng, python_rng = run.finished
    if done > run.last_saved:
        torch.set_rng_state(torch_rng)
        random.setstate(python_rng)
        return run.save(done)
    return checkpoint.newest(out_dir)
