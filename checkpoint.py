"""Training checkpoints: everything needed to continue a run bit for bit, written so that a kill
at any moment leaves the newest complete checkpoint loadable.

A checkpoint `out_dir/ckpt_{step:06d}.pt` holds the trained parameters (all of them for full
fine-tuning, the LoRA adapters otherwise), the optimizer and scheduler states, the RNG states,
the run's config and a fingerprint (names and shapes of the trained parameters). train.py writes
and resumes them; eval.py rebuilds a model from one.
"""

import errno
import fcntl
import json
import os
import random
import shutil
import socket

import torch

from configurator import ConfigError
from model import add_lora, load, merge_lora_float32


def fingerprint(model):
    """Names and shapes of the trained parameters: a checkpoint of another model is refused."""
    return sorted((n, list(p.shape)) for n, p in model.named_parameters() if p.requires_grad)


def names(out_dir):
    """Checkpoint files in out_dir, oldest first (a half-written `.tmp` file is never listed)."""
    if not os.path.isdir(out_dir):
        return []
    return sorted(f for f in os.listdir(out_dir) if f.startswith("ckpt_") and f.endswith(".pt"))


def remove_partial(out_dir):
    """Delete checkpoint files a kill left half-written (never read: names() skips them)."""
    for f in os.listdir(out_dir) if os.path.isdir(out_dir) else []:
        if f.startswith("ckpt_") and f.endswith(".pt.tmp"):
            os.remove(os.path.join(out_dir, f))


def claim(out_dir, resume, overwrite):
    """Make out_dir this run's own, before any heavy work: an exclusive lock held for the life of
    the process (a second run on the folder stops, naming the holder), and a folder that already
    holds a run (checkpoints or log.jsonl) is continued only with `resume`, emptied with
    `overwrite`, or refused. Returns the open lock file (keep it referenced)."""
    os.makedirs(out_dir, exist_ok=True)
    lock = open(os.path.join(out_dir, ".lock"), "a+")
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
    previous = names(out_dir) + [f for f in ("log.jsonl", "completions.jsonl", "final.json") if os.path.exists(os.path.join(out_dir, f))]
    if previous and not resume:
        if not overwrite:
            raise ConfigError(
                f"--output_dir={out_dir} holds a run ({', '.join(previous[:3])}): "
                "--resume_from_checkpoint continues it, --overwrite_output_dir starts over"
            )
        for f in previous:
            os.remove(os.path.join(out_dir, f))
    return lock


def newest(out_dir):
    found = names(out_dir)
    return os.path.join(out_dir, found[-1]) if found else None


def save(out_dir, step, model, opt, sched, config, keep=2, base=None, counters=None):
    """base: the model the trained parameters sit on (LoRA adapters need it to be rebuilt);
    default config["model_name_or_path"]."""
    state = {
        "step": step,
        "base": base or config["model_name_or_path"],
        "model": {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad},
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
        "config": config,
        "fingerprint": fingerprint(model),
        "counters": dict(counters or {}),
    }
    path = os.path.join(out_dir, f"ckpt_{step:06d}.pt")
    try:
        with open(path + ".tmp", "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
    except (OSError, RuntimeError) as e:  # torch reports a short write as RuntimeError ("unexpected pos")
        os.remove(path + ".tmp")
        full = (isinstance(e, OSError) and e.errno == errno.ENOSPC) or shutil.disk_usage(out_dir).free < 64 * 2**20
        if not full:
            raise
        last = newest(out_dir) or "none yet"
        raise SystemExit(
            f"the disk of {out_dir} is full: checkpoint {step} not written (removed); free space, then resume from {last}"
        ) from None
    os.replace(path + ".tmp", path)  # atomic: a reader sees the old file set or the complete new one
    for old in names(out_dir)[:-keep]:
        os.remove(os.path.join(out_dir, old))
    return path


def truncate_log(log_path, step):
    """Keep the log lines of steps <= step (those a resume does not run again); a line cut off by
    a kill is dropped."""
    if not os.path.exists(log_path):
        return
    kept = []
    with open(log_path) as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("step", 0) <= step:
                kept.append(json.dumps(row) + "\n")
    with open(log_path + ".tmp", "w") as f:
        f.writelines(kept)
    os.replace(log_path + ".tmp", log_path)


def read(path):
    """The checkpoint's state dict, or one line saying why it cannot be read."""
    if not os.path.isfile(path):
        raise ConfigError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated or not a torch file
        raise ConfigError(f"checkpoint {path} cannot be read ({type(e).__name__}: {str(e)[:120]})") from None
    missing = {"step", "base", "model", "config", "fingerprint"} - set(state) if isinstance(state, dict) else {"everything"}
    if missing:
        raise ConfigError(f"{path} is not a training checkpoint of this project (missing {sorted(missing)})")
    return state


def restore(path, state, model, opt=None, sched=None, config=None, must_match=()):
    """Copy a checkpoint into model (and opt, sched, RNGs), after every check has passed, so a
    refused checkpoint never leaves the model half-loaded."""
    if state["fingerprint"] != fingerprint(model):
        raise ConfigError(f"{path} was written for a different model (its trained parameters differ from this one's)")
    for key in sorted(must_match):
        if state["config"].get(key) != config[key]:
            raise ConfigError(f"{path} has {key}={state['config'].get(key)!r} but this run has {key}={config[key]!r}")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, v in state["model"].items():
            params[n].copy_(v)
    if opt is not None:
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
    return state["step"]


def resume(out_dir, model, opt, sched, config, must_match, log_path, master=True, log=print):
    """Continue from the newest checkpoint in out_dir: (step, counters), or (0, {}) when there is
    none. The steps after it are run again, so their log lines (and a half-written checkpoint)
    are dropped."""
    state = path = None
    for name in reversed(names(out_dir)):  # the newest readable one: a damaged file is passed over
        try:
            path = os.path.join(out_dir, name)
            state = read(path)
            break
        except ConfigError as e:
            log(f"warning: {str(e).removeprefix('config error: ')}; trying an older checkpoint")
            state = None
    if state is None:
        log(f"resume: no readable checkpoint in {out_dir}, starting fresh")
        if master:  # a kill before the first checkpoint: its log lines are run again
            truncate_log(log_path, 0)
            remove_partial(out_dir)
        return 0, {}
    step = restore(path, state, model, opt, sched, config, must_match)
    if master:
        truncate_log(log_path, step)
        remove_partial(out_dir)
    log(f"resumed from {path} (step {step})")
    return step, state.get("counters", {})


def load_trained(path, device="cpu", merge_lora=True):
    """(model, tokenizer, config) from a checkpoint: the base model its config names, LoRA
    adapters of the same rank if it trained them (merged into the weights, or kept as peft)."""
    state = read(path)
    cfg = state["config"]
    try:
        model, tok = load(state["base"], device=device)
    except ValueError as e:
        raise ConfigError(f"{path}: its base model cannot be loaded ({e})") from None
    if cfg["lora_r"] > 0:
        model = add_lora(model, cfg["lora_r"], cfg["lora_alpha"], cfg["lora_target_modules"])
    else:
        model.requires_grad_(True)
    restore(path, state, model)
    if cfg["lora_r"] > 0 and merge_lora:
        model = merge_lora_float32(model)
    return model.eval(), tok, cfg
