"""What eval.py evaluates with: its own keys, then the settings a model's training run decided (a checkpoint's
recorded config, or a training preset), each checked before any model loads and each said where it came from."""

import json
import os
import sys

from plumbing import checkpoint, data, outdir, restore
from plumbing.configurator import configure, declared, preset_values
from plumbing.errors import ConfigError, config_errors

# the keys of a training run's config that decide how its model is evaluated (eval.py has the same names)
RUN_SETTINGS = (
    *("task", "system_prompt", "compact_prompt", "seed", "eval_file", "eval_items", "max_prompt_length"),
    *(k for f in data.option_files() for k in declared(f)),
    *("max_completion_length", "block_length", "sampling_steps", "unmasking", "thresholds"),
)


def held_out_decoding(train_cfg):
    """How a training run's held-out items are decoded, by train.py during the run and by eval.py after it
    (one rule, so the two scores agree): greedy, at the rollouts' length, block length and steps; by the
    rollouts' threshold τ (at most those steps) when they decode by threshold, else by low confidence (random
    unmasking explores in rollouts, it is not a decoder)."""
    by_threshold = train_cfg.get("unmasking") == "threshold"
    return dict(
        max_completion_length=train_cfg["max_completion_length"],
        block_length=train_cfg["block_length"],
        sampling_steps=train_cfg["sampling_steps"],
        unmasking="threshold" if by_threshold else "low_confidence",
        threshold=train_cfg["threshold"] if by_threshold else None,
    )


def run_settings(train_cfg):
    """The eval.py settings a training config (a checkpoint's, or a preset's) decides: its held-out decoding
    as the grid's one row."""
    decides = ("max_completion_length", "block_length", "sampling_steps", "unmasking", "threshold")
    out = {
        k: tuple(train_cfg[k]) if isinstance(train_cfg[k], list) else train_cfg[k]
        for k in RUN_SETTINGS
        if k in train_cfg and k not in decides
    }
    if out.get("eval_items") == 0:  # the run did not evaluate: eval.py's own count
        del out["eval_items"]
    if not all(k in train_cfg for k in decides[:3]):  # a config that records no decoding
        return out
    decoding = held_out_decoding(train_cfg)
    out |= dict(
        max_completion_length=(decoding["max_completion_length"],),  # one value in a run, a grid here
        block_length=decoding["block_length"],
        sampling_steps=(decoding["sampling_steps"],),
        unmasking=decoding["unmasking"],
        thresholds=() if decoding["threshold"] is None else (decoding["threshold"],),
    )
    return out


def take_run_settings(cfg, given, specs, preset, train_cfg):
    """Fill cfg, where the command line left a key alone, from the checkpoints among the models, then
    from training presets (a setting a checkpoint recorded stays, and a preset or the command line that
    differs from it is said in one line). Returns {key: where its value came from}."""
    sources = {}
    if "step_fractions" in given:  # steps asked for as fractions of G: the run's one step count would override them
        given = given | {"sampling_steps"}
    for path in [spec for kind, spec in specs if kind == "checkpoint"]:
        for k, v in run_settings(checkpoint.read(path)["config"]).items():
            if k in given:
                if k in ("task", "system_prompt") and cfg[k] != v:
                    print(f"note: {path} was trained with {k}={v!r}; evaluating with --{k}={cfg[k]!r}", file=sys.stderr)
                continue
            if k in sources and cfg[k] != v:
                raise ConfigError(
                    f"{sources[k]} and {path} were trained with different {k} ({cfg[k]!r}, {v!r}): "
                    f"evaluate them apart, or choose one with --{k}"
                )
            cfg[k], sources[k] = v, path
    if train_cfg:
        for k, v in run_settings(train_cfg).items():
            if k in sources and cfg[k] != v:  # what the checkpoint was trained with wins over a preset
                note = f"note: {sources[k]} was trained with {k}={cfg[k]!r}, {preset} sets {v!r}: evaluated as trained"
                print(note, file=sys.stderr)
            elif k not in given and k not in sources:
                cfg[k], sources[k] = v, preset
        if "output_dir" not in given:
            cfg["output_dir"] = os.path.join(train_cfg["output_dir"], "eval")
    return sources


def settings_line(cfg, sources, given):
    """Which run settings were used, grouped by where each came from."""
    where = {}
    for k in RUN_SETTINGS:
        source = sources.get(k, "the command line" if k in given else "eval.py's defaults")
        value = f"{len(cfg[k])} characters" if k == "system_prompt" and len(cfg[k]) > 40 else repr(cfg[k])
        where.setdefault(source, []).append(f"{k}={value}")
    return "; ".join(f"from {source}: {', '.join(kv)}" for source, kv in where.items())


def eval_settings(script, argv, ranges, choices, *, check_decoding):
    """(cfg, the models as (kind, path), the (G, m, τ) grid, the system turn's text, the settings line).
    check_decoding: the sampler's own check of its settings (sample.check_settings), run on each row of the grid.
    A positional argument is a preset: of eval.py's own keys (applied as if given on the command line), or else
    a training preset (the settings its run decided, as a checkpoint's, and its base and run as the models)."""
    files = {a: preset_values(a) for a in argv if not a.startswith("-")}  # each preset's values, read once
    own = {f: keys for f, keys in files.items() if keys.keys() <= declared(script).keys()}
    presets = [f for f in files if f not in own]
    own_args = [*own, *(a for a in argv if a.startswith("-") and a != "--print_config")]
    cfg = configure(script, own_args, data.option_files(), ranges=ranges, choices=choices)
    on_command_line = {a[2:].partition("=")[0] for a in argv if a.startswith("--")}
    given = on_command_line | {k for keys in own.values() for k in keys}
    train_py = os.path.join(os.path.dirname(os.path.abspath(script)), "train.py")
    train_cfg = configure(train_py, presets, data.option_files()) if presets else None
    if presets and "models" not in given:  # a training preset names its models: its base and its run, if run
        run, trained = train_cfg["output_dir"], checkpoint.newest(train_cfg["output_dir"])
        cfg["models"] = (train_cfg["model_name_or_path"], *([run] if trained else []))
        cfg["labels"] = cfg["labels"] if "labels" in given else ("base", "AGRPO")[: len(cfg["models"])]
        if not trained:
            print(
                f"note: {run} holds no checkpoint yet: evaluating {train_cfg['model_name_or_path']} alone",
                file=sys.stderr,
            )
    if "models" in given and "labels" not in given:  # the default labels name the default two models only
        cfg["labels"] = ()
    paths = cfg["models"] and all(isinstance(s, str) and s for s in cfg["models"])
    specs = [restore.resolve(s) for s in cfg["models"]] if paths else []
    sources = take_run_settings(cfg, given, specs, presets[-1] if presets else None, train_cfg)
    sources |= {k: f for f, keys in own.items() for k in keys if k not in on_command_line}
    if "--print_config" in argv:
        print(json.dumps(cfg, indent=1))
        sys.exit(0)
    check(cfg)
    restore.check_base(cfg["base_model"] if "base_model" in given else None)  # "" is the default: no base named
    grid = step_grid(cfg, check_decoding)
    outdir.claim(cfg["output_dir"], "the results")  # before any model is loaded
    with config_errors():  # a recorded system turn is its text; otherwise "task", a .txt file, or the text
        recorded = sources.get("system_prompt") in [spec for kind, spec in specs if kind == "checkpoint"]
        system = cfg["system_prompt"] if recorded else data.system_prompt_text(cfg["task"], cfg["system_prompt"])
    return cfg, specs, grid, system, settings_line(cfg, sources, given)


def check(cfg):
    """Stop at a setting eval.py cannot run with, naming the key."""
    with config_errors():
        data.check_task_options(cfg["task"], cfg)
    if cfg["eval_file"] not in ("", "hub") and not os.path.exists(cfg["eval_file"]):
        raise ConfigError(f"--eval_file={cfg['eval_file']} does not exist")
    if cfg["eval_items"] == 0:
        raise ConfigError("--eval_items=0 scores nothing: give a count, or -1 for the whole test set")
    rules = dict(
        models=(lambda v: isinstance(v, str) and v, "a non-empty tuple of model paths"),
        max_completion_length=(lambda v: isinstance(v, int) and v >= 1, "a non-empty tuple of lengths >= 1"),
        step_fractions=(lambda v: isinstance(v, (int, float)) and 0 < v <= 1, "in (0, 1]"),
        sampling_steps=(lambda v: isinstance(v, int) and v >= 1, "step counts >= 1"),
    )
    for key, (ok, rule) in rules.items():
        values = cfg[key] or dict(step_fractions=(1.0,), sampling_steps=(1,)).get(key, ())  # () = not used
        if not values or not all(ok(v) for v in values):
            raise ConfigError(f"--{key}={cfg[key]!r} must be {rule}")
    if cfg["labels"] and len(cfg["labels"]) != len(cfg["models"]):
        raise ConfigError(
            f"--labels has {len(cfg['labels'])} names for {len(cfg['models'])} models; give one per model or ()"
        )
    names = cfg["labels"] or cfg["models"]  # the rows of the table, the curves of the plot
    if len(set(names)) < len(names):
        key = "labels" if cfg["labels"] else "models"
        raise ConfigError(f"--{key}={names!r} names a model twice: give each its own label")


def step_grid(cfg, check_decoding):
    """(G, m, τ): fixed steps m (τ None), or threshold τ with at most m steps; every one is checked by
    check_decoding (the sampler's check) before any model is loaded. With unmasking low_confidence or random,
    the fixed rows and one row per τ at m = G (at least one position a step); with unmasking threshold, each τ
    at each m."""
    if cfg["unmasking"] == "threshold" and not cfg["thresholds"]:
        raise ConfigError("--unmasking=threshold decodes by --thresholds, which is empty: give one, e.g. (0.9,)")
    grid = []
    for G in cfg["max_completion_length"]:
        counts = cfg["sampling_steps"] or tuple(max(1, round(f * G)) for f in cfg["step_fractions"])
        if cfg["unmasking"] == "threshold":
            rows = [(G, m, tau) for m in dict.fromkeys(counts) for tau in cfg["thresholds"]]
        else:
            rows = [(G, m, None) for m in dict.fromkeys(counts)] + [(G, None, tau) for tau in cfg["thresholds"]]
        for row in rows:
            try:
                check_decoding(**row_decoding(cfg, *row))
            except ValueError as e:
                raise ConfigError(f"completion length {G}, {row[1] or G} steps: {e}") from None
        grid += rows
    return grid


def row_decoding(cfg, G, m, tau):
    """The sampler settings of the grid's row (G, m, τ)."""
    by_threshold = tau is not None
    return dict(
        max_completion_length=G,
        block_length=cfg["block_length"],
        sampling_steps=m or G,
        unmasking="threshold" if by_threshold else cfg["unmasking"],
        threshold=tau,
    )
