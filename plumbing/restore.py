"""Rebuilding from a checkpoint (checkpoint.py's folders): a run resumed bit for bit, after every file and
tensor is checked, and a trained model rebuilt for eval.py and export.py, whose base's own code runs only
when the user names it or it is a family's released model."""

import json
import math
import os
import random
import sys

import torch
from torch.distributed.checkpoint.api import CheckpointException

from plumbing import ddp, fsdp, sharded
from plumbing.checkpoint import ACCUMULATE, RunMismatch, linked, names, newest_whole, read, remove_partial, truncate_log
from plumbing.checkpoint_tensors import fingerprint, saved_name, shapes_problem, tensors, trainer_tensors
from plumbing.errors import ConfigError
from plumbing.model import add_lora, load, merge_lora_float32
from plumbing.model_names import is_shipped_or_official, model_path_error


def restore(path, state, model, opt=None, sched=None, config=None, must_match=(), world=None, train_items=None):
    """Copy a checkpoint into model (and opt, sched, RNGs), after every check has passed and every
    file has been read, so a refused checkpoint never leaves the model half-loaded. world: the ranks
    of the resuming run; with --gradient_accumulation_steps, the same micro-batches a step as before.
    train_items: the resuming run's (data.items_digest), which must be those the checkpoint was trained on (then
    --train_file may name another path: the items are what is compared). Every key of must_match is compared
    before the items, so a changed setting that changes them (--seed, a task's option) is named itself."""
    if [list(x) for x in state["fingerprint"]] != fingerprint(model):
        raise RunMismatch(f"{path} was written for a different model (its trained parameters differ from this one's)")
    base_weights = getattr(model, "weights_digest", None)
    if None not in (state.get("base_weights"), base_weights) and state["base_weights"] != base_weights:
        raise RunMismatch(
            f"{path} holds LoRA adapters trained on other base weights than those loaded now: the base model "
            f"{state['base']} has changed since, or another was named"
        )
    items_known = None not in (state.get("train_items"), train_items)
    for key in sorted(must_match):  # a key first: a changed --seed or task option is named, not the items it changes
        if key == "train_file" and items_known:
            continue  # the file's items are compared (a moved or copied file with the same items resumes)
        if not same_setting(state["config"].get(key), config[key]):
            raise RunMismatch(
                f"{path} has {key}={state['config'].get(key)!r} but this run has {key}={config[key]!r}: resume with "
                f"--{key}={state['config'].get(key)!r}, or start over with --overwrite_output_dir"
            )
    if items_known and state["train_items"] != train_items:
        source = (
            f"--train_file={config['train_file']}" if config.get("train_file") else f"the {config['task']} generator"
        )
        raise RunMismatch(
            f"{path} was trained on other training items than {source} gives now: resume with the data it was "
            "trained on, or start over with --overwrite_output_dir"
        )
    was, now = (state.get("world_size"), state["config"].get(ACCUMULATE)), (world, (config or {}).get(ACCUMULATE))
    if None not in (*was, *now) and was[0] * was[1] != now[0] * now[1]:  # a step's batch: ranks × micro-batches
        raise RunMismatch(
            f"{path} was trained on {was[0]} ranks × --{ACCUMULATE}={was[1]}, this run has {now[0]} × {now[1]}: "
            "keep the product (the micro-batches of a step)"
        )
    if state.get("layout") == sharded.LAYOUT:
        return restore_sharded(path, state, model, opt, sched)
    saved = state["tensors"] if "tensors" in state else tensors(path)
    extra = (state["trainer"] if "trainer" in state else trainer_tensors(path)) if opt is not None else None
    if opt is not None and not (isinstance(extra, dict) and {"optimizer", "scheduler", "torch_rng"} <= extra.keys()):
        raise ConfigError(f"checkpoint {path}: optimizer.pt lacks the optimizer, scheduler or RNG state")
    if opt is not None:
        trained = [p for group in opt.param_groups for p in group["params"]]
        if fsdp.is_sharded(model):  # FSDP's optimizer state is keyed by parameter name
            by_id = {id(p): n for n, p in model.named_parameters()}
            keyed = {by_id[id(p)]: p for p in trained}
        else:  # torch's by the parameter's index in the param groups
            keyed = dict(enumerate(trained))
        problem = optimizer_problem(extra["optimizer"], keyed) or scheduler_problem(extra["scheduler"], opt)
        if problem:
            raise ConfigError(f"checkpoint {path}: optimizer.pt {problem}")
    if fsdp.is_sharded(model):  # each rank keeps its part of the whole tensors
        saved_as = {n: saved_name(n) for n, p in model.named_parameters() if p.requires_grad}
        check_tensors(path, saved, {saved_as[n]: p for n, p in model.named_parameters() if n in saved_as})
        fsdp.load_weights(model, {n: saved[name] for n, name in saved_as.items()})
    elif hasattr(model, "peft_config"):
        from peft import get_peft_model_state_dict, set_peft_model_state_dict

        check_tensors(path, saved, get_peft_model_state_dict(model))
        set_peft_model_state_dict(model, saved)
    else:
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        check_tensors(path, saved, params)
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(saved[n])
    if opt is not None:
        try:
            if fsdp.is_sharded(model):
                fsdp.load_optimizer(model, opt, extra["optimizer"])
            else:
                opt.load_state_dict(extra["optimizer"])
            sched.load_state_dict(extra["scheduler"])
            torch.set_rng_state(extra["torch_rng"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:  # loaded as data, but not this optimizer's state
            raise ConfigError(
                f"checkpoint {path}: optimizer.pt does not hold this run's optimizer state ({type(e).__name__})"
            ) from None
        version, internal, gauss = state["python_rng"]
        random.setstate((version, tuple(internal), gauss))
    return state["step"]


def same_setting(saved, now):
    """A checkpoint's config value and this run's are the same setting: equal as JSON holds them (a tuple is
    saved as a list), or two spellings of one file or folder (./models/x and models/x, or a link to it)."""
    if saved == json.loads(json.dumps(now)):
        return True
    if not (isinstance(saved, str) and isinstance(now, str) and saved and now):
        return False
    try:
        return os.path.samefile(saved, now)
    except OSError:  # not both on disk: spellings of one path still match (a text with spaces is no path)
        return not any(c.isspace() for c in saved + now) and os.path.normpath(saved) == os.path.normpath(now)


def restore_sharded(path, state, model, opt, sched):
    """restore() of a sharded checkpoint (sharded.py): every shape checked against its .metadata, then each
    rank reads the pieces of its own shards, on any number of ranks (or whole, on one process)."""
    saved_as = {n: saved_name(n) for n, p in model.named_parameters() if p.requires_grad}
    try:
        held = sharded.shapes(path)
    except Exception as e:  # DCP raises its own error types on a damaged index
        raise ConfigError(f"checkpoint {path} cannot be read ({type(e).__name__}: {str(e)[:120]})") from None
    problem = shapes_problem({saved_as[n]: list(p.shape) for n, p in model.named_parameters() if n in saved_as}, held)
    if problem:
        raise ConfigError(f"checkpoint {path} {problem}")
    extra = state["trainer"] if "trainer" in state else trainer_tensors(path)
    if opt is not None:
        if not (isinstance(extra, dict) and {"scheduler", "torch_rng"} <= extra.keys()):
            raise ConfigError(f"checkpoint {path}: optimizer.pt lacks the scheduler or RNG state")
        problem = scheduler_problem(extra["scheduler"], opt)
        if problem:
            raise ConfigError(f"checkpoint {path}: optimizer.pt {problem}")
    try:  # DCP plans every read (each key in the checkpoint, of its shape) before it copies anything
        sharded.load(path, model, opt, saved_name)
    except (CheckpointException, KeyError, ValueError, RuntimeError) as e:
        raise ConfigError(
            f"checkpoint {path}: its shards do not hold this run's trained tensors and optimizer state "
            f"({type(e).__name__}: {str(e).strip()[:160]})"
        ) from None
    # a value that is not finite refuses the checkpoint on every rank (an older one, loaded next, overwrites all)
    if not ddp.every_rank(sharded.all_finite(model, opt)):
        raise ConfigError(f"checkpoint {path}: its shards hold a weight or optimizer state that is not finite")
    if opt is not None:
        sched.load_state_dict(extra["scheduler"])
        torch.set_rng_state(extra["torch_rng"])
        version, internal, gauss = state["python_rng"]
        random.setstate((version, tuple(internal), gauss))
    return state["step"]


def optimizer_problem(saved, params):
    """Why a saved optimizer state does not fit `params` {state key: parameter}, or None: a parameter without
    state while others have some (its moments would restart), a state tensor of another shape or dtype, or
    a value that is not finite."""
    state = saved.get("state") if isinstance(saved, dict) else None
    if not isinstance(state, dict) or not isinstance(saved.get("param_groups"), list):
        return "holds no optimizer state and parameter groups"
    if state and state.keys() != params.keys():
        missing = sorted(params.keys() - state.keys(), key=str)
        if missing:
            return f"holds no state for {len(missing)} of {len(params)} trained parameters (#{missing[0]}, ...)"
        return "holds state for parameters this run does not train"
    for key, entry in state.items():
        p = params[key]
        if not isinstance(entry, dict):
            return f"holds a state of parameter #{key} that is not a map"
        for name, value in entry.items():
            if not torch.is_tensor(value):
                return f"holds {name} of parameter #{key} as {type(value).__name__}, not a tensor"
            if value.dim() and (list(value.shape) != list(p.shape) or value.dtype != p.dtype):
                return (
                    f"holds {name} of parameter #{key} as {value.dtype} {list(value.shape)}, "
                    f"the parameter is {p.dtype} {list(p.shape)}"
                )
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                return f"holds a {name} of parameter #{key} that is not finite"
    return None


def scheduler_problem(saved, opt):
    """Why a saved learning-rate schedule does not fit the optimizer, or None."""
    if not isinstance(saved, dict):
        return "holds no scheduler state"
    epoch, base = saved.get("last_epoch"), saved.get("base_lrs")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < -1:
        return f"holds a scheduler last_epoch of {epoch!r}, not a step count"
    if not isinstance(base, list) or len(base) != len(opt.param_groups):
        return "holds a scheduler for another number of parameter groups"
    if not all(isinstance(x, (int, float)) and math.isfinite(x) for x in base + list(saved.get("_last_lr", []))):
        return "holds a scheduler learning rate that is not a finite number"
    return None


def check_tensors(path, saved, expected):
    """Every expected tensor is in the checkpoint with its own shape (shapes_problem), before any is copied."""
    problem = shapes_problem(
        {n: list(t.shape) for n, t in expected.items()}, {n: list(t.shape) for n, t in saved.items()}
    )
    if problem:
        raise ConfigError(f"checkpoint {path} {problem}")


def resume(
    out_dir, model, opt, sched, config, may_change=(), log_paths=(), master=True, log=print, only=None, world=1,
    train_items=None,
):  # fmt: skip
    """Continue from the newest checkpoint in out_dir, or from the checkpoint folder `only`:
    (step, counters), or (0, {}) when there is none. Every key of config but those in may_change must
    equal the checkpoint's (a path: the same file or folder, however spelled), and so must the training
    items (their digest). The steps after it are run
    again, so their lines in the JSONL files `log_paths` (and a half-written checkpoint) are dropped."""
    # the newest readable one (a damaged one is passed over), or the named one as it is
    paths = [only] if only is not None else [os.path.join(out_dir, name) for name in reversed(names(out_dir))]
    for warning in linked(out_dir) if only is None else []:
        log(warning)
    step = None
    for path in paths:
        try:
            state = read(path, with_tensors=True)  # every file read and checked before anything is copied
            must_match = set(config) - set(may_change) - {ACCUMULATE}
            step = restore(path, state, model, opt, sched, config, must_match, world, train_items)
            break
        except ConfigError as e:
            if only is not None or isinstance(e, RunMismatch):
                raise
            log(f"warning: {str(e).removeprefix('config error: ')}; trying an older checkpoint")
    if step is None and paths:
        raise ConfigError(
            f"none of the {len(paths)} checkpoints in {out_dir} can be used (warnings above): name a good one with "
            "--resume_from_checkpoint=PATH, or start over with --overwrite_output_dir"
        )
    if step is None:
        log(f"resume: no checkpoint in {out_dir}, starting fresh")
        step = 0  # a kill before the first checkpoint: its steps' lines are run again
    if master:
        for jsonl in log_paths:
            truncate_log(jsonl, step)
        remove_partial(out_dir)
    if step == 0:
        return 0, {}
    log(f"resumed from {path} (step {step})")
    return step, state.get("counters", {})


def has_own_code(folder):
    """True if a local model folder's config names modeling code of its own (`auto_map`)."""
    try:
        with open(os.path.join(folder, "config.json")) as f:
            return "auto_map" in json.load(f)
    except (OSError, ValueError, TypeError):
        return False


def check_base(base):
    """A --base_model given empty (a wrapper's unset variable) is refused: the base would silently be the
    one the checkpoint names, whose own code runs only when the user names it."""
    if base is not None and not base.strip():
        raise ConfigError(
            "--base_model= is empty: name the base model (a folder or a hub id), or leave the flag out to use "
            "the one the checkpoint names"
        )


def load_trained(path, device="cpu", merge_lora=True, base=None):
    """(model, tokenizer, config) from a checkpoint folder: its base model with the LoRA adapters of
    the run (merged into the weights in float32, or kept as peft), or, for full fine-tuning, the
    trained weights on the base. `base`: the base model as the user names it; by default the one the
    checkpoint names, whose own modeling code runs only if it is a hub id or a model shipped with
    the project: a local folder named by a checkpoint file could hold any code."""
    check_base(base)
    state = read(path, verify=True)
    cfg = state["config"]
    trusted = base is not None or is_shipped_or_official(state["base"])
    if not trusted and has_own_code(state["base"]):
        raise ConfigError(
            f"{path} names its base model {state['base']}, a local folder with its own modeling code, which is "
            f"not run for a name read from a checkpoint: if you trust that folder, pass --base_model={state['base']}"
        )
    if not trusted and not os.path.isdir(state["base"]):
        raise ConfigError(
            f"{path} names its base model {state['base']}, a hub id that is not a family's released model "
            f"(families.OFFICIAL_HUB_IDS), whose code is not run for a name read from a checkpoint: if you trust "
            f"it, pass --base_model={state['base']}"
        )
    try:
        model, tok = load(base or state["base"], device=device, trust_remote_code=trusted)
    except ValueError as e:
        raise ConfigError(f"{path}: its base model cannot be loaded ({e})") from None
    if cfg.get("lora_r", 0) > 0:
        model = add_lora(model, cfg["lora_r"], cfg["lora_alpha"], cfg["lora_target_modules"])
    else:
        model.requires_grad_(True)
    restore(path, state, model)
    if cfg.get("lora_r", 0) > 0 and merge_lora:
        model = merge_lora_float32(model)
    return model.eval(), tok, cfg


def resolve(spec):
    """('checkpoint', folder) for a checkpoint folder or a run folder (its newest whole checkpoint),
    ('model', spec) for a model folder (an exported one too) or a hub id."""
    if os.path.isfile(os.path.join(spec, "trainer_state.json")):
        return "checkpoint", spec
    if os.path.isdir(spec) and not os.path.exists(os.path.join(spec, "config.json")):
        if not names(spec):
            raise ConfigError(f"{spec} holds no checkpoint-N folder and no model (train first, or name a checkpoint)")
        newest = newest_whole(spec, log=lambda line: print(line, file=sys.stderr))
        if newest is None:
            raise ConfigError(f"none of the checkpoints in {spec} is whole (warnings above)")
        return "checkpoint", newest
    problem = model_path_error(spec)
    if problem:
        raise ConfigError(problem)
    return "model", spec
