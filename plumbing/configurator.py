"""nanoGPT-style configuration: `python train.py [configs/x.py ...] [--key=value ...]`. A script's keys are
the commented assignments between `# --- config` and `# --- end of config`, grouped under comment lines:
defaults, --help and the only keys there are. Presets run over them, then each --key=value is read as a
Python literal (a bare word stays a string). A wrong type (an annotated key takes the types it names), an
unknown key, a float not finite or a value outside the script's RANGES stops the script in one line."""

import ast
import contextlib
import difflib
import json
import math
import os
import re
import sys
import traceback

from plumbing.errors import ConfigError

BEGIN, END = "# --- config", "# --- end of config"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository
KEY = re.compile(r"(\w+)\s*(?::\s*([\w |]+?))?\s*=\s*(.+?)\s*#\s*(.*)")  # key[: types] = default  # comment
TYPES = {"bool": bool, "str": str, "int": int, "float": float, "tuple": tuple}
# other code's names for these keys (TRL, nanoGPT, verl, LLaDA's generate, d1): the "did you mean"
SYNONYMS = dict(
    lr="learning_rate", grad_clip="max_grad_norm", out_dir="output_dir", wandb_log="report_to", mu="num_iterations",
    gradient_accumulation="gradient_accumulation_steps", group_size="num_generations", rollout_n="num_generations",
    ppo_epochs="num_iterations", clip_ratio_low="epsilon", clip_ratio_high="epsilon_high", clip_ratio="epsilon",
    kl_coef="beta", lora_rank="lora_r", target_modules="lora_target_modules", model_path="model_name_or_path",
    gen_length="max_completion_length", steps="sampling_steps", diffusion_steps="sampling_steps",
    remasking="unmasking", eval_steps="eval_every", resume="resume_from_checkpoint", epochs="num_train_epochs",
    batch_size="per_device_train_batch_size",
)  # fmt: skip


def groups(script):
    """[(heading, {key: (default, comment, types)})] of the script's config block, in order."""
    block = open(script).read().split(BEGIN, 1)[1].split(END, 1)[0]
    out = [("", {})]
    for line in block.splitlines()[1:]:
        if match := KEY.fullmatch(line):
            key, types, default, comment = match.groups()
            types = tuple(TYPES[t.strip()] for t in types.split("|")) if types else ()
            out[-1][1][key] = (ast.literal_eval(default), comment, types)
        elif line.startswith("# "):
            out.append((line[2:], {}))
    return [(heading, keys) for heading, keys in out if keys]


def declared(script):
    """{key: (default, comment)} of the script's config block."""
    return {k: v[:2] for _, keys in groups(script) for k, v in keys.items()}


def coerce(key, value, default, types=()):
    """value if it has the default's type or one of `types` (an int widened to a float, a list made a tuple)."""
    if type(value) in (type(default), *types):
        return value
    if (type(default), type(value)) in ((float, int), (tuple, list)):
        return type(default)(value)
    raise ConfigError(
        f"--{key}={value!r} has type {type(value).__name__}, expected {type(default).__name__} (default {default!r})"
    )


def check_ranges(config, ranges):
    """Stop at a float that is not finite, or at a value outside its interval (ranges: {key: "[1, inf)"})."""
    for key, value in config.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"--{key}={value!r} must be a finite number")
    for key, interval in ranges.items():
        low, high = (float(a) ** int(b or 1) for a, _, b in (x.partition("**") for x in interval[1:-1].split(",")))
        v = config[key]
        if not ((low <= v if interval[0] == "[" else low < v) and (v <= high if interval[-1] == "]" else v < high)):
            raise ConfigError(f"--{key}={v!r} must be in {interval}")


def preset_values(path):
    """{name: value} a preset file sets (names starting with _, functions and modules left out)."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path} does not exist (configs/ lists the presets)")
    scope = {"__file__": os.path.abspath(path)}  # a preset may exec a shared file beside it
    try:
        exec(compile(open(path).read(), path, "exec"), scope)  # a preset is trusted Python, like nanoGPT's
    except Exception as e:  # a syntax error, or a name it uses that does not exist
        lines = [f.lineno for f in traceback.extract_tb(e.__traceback__) if f.filename == path]
        line, why = getattr(e, "lineno", None) or (lines or "?")[-1], getattr(e, "msg", None) or e
        raise ConfigError(f"config file {path}, line {line}: {type(e).__name__}: {why}") from None
    return {k: v for k, v in scope.items() if not (k.startswith("_") or callable(v) or type(v).__name__ == "module")}


def help_text(script, sections, ranges):
    """The script's docstring's first paragraph, then its keys by group: default, comment, range."""
    lines = [(ast.get_docstring(ast.parse(open(script).read())) or "").split("\n\n")[0], ""]
    where = os.path.relpath(os.path.abspath(script), ROOT)  # tools/sft.py, bench/x.py: as run from the repository
    lines.append(f"usage: python {where} [config.py ...] [--key=value ...] [--print_config]")
    width = max(len(k) for _, keys in sections for k in keys) + 2
    for heading, keys in sections:
        lines += ["", f"{heading}:"] * bool(heading) + [
            f"  --{k:<{width}} {d!r:<22} {c}{' ' + ranges[k] if k in ranges else ''}" for k, (d, c, _) in keys.items()
        ]
    return "\n".join(lines)


def configure(script, argv=None, option_files=(), ranges=None):
    """The resolved config dict of `script`: its defaults and those of `option_files` (the task files'
    generator options), then presets and --key=value overrides in order. --help and --print_config exit."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sections = groups(script) + [
        (f"options of {os.path.relpath(p, root)}", k) for p in option_files for _, k in groups(p)
    ]
    known = {k: v for _, keys in sections for k, v in keys.items()}
    config, ranges, argv = {k: v[0] for k, v in known.items()}, ranges or {}, sys.argv[1:] if argv is None else argv
    if "--help" in argv or "-h" in argv:
        print(help_text(script, sections, ranges))
        sys.exit(0)
    for arg in (a for a in argv if a != "--print_config"):
        if arg.startswith("--"):
            key, eq, raw = arg[2:].partition("=")
            with contextlib.suppress(ValueError, SyntaxError):
                raw = ast.literal_eval(raw)
            pairs, where = {key: raw if eq else True}, ""  # --flag means --flag=True
        else:
            pairs, where = preset_values(arg), f"{arg} sets "
        for key, value in pairs.items():
            if key not in known:
                close = (
                    [SYNONYMS[key]] if SYNONYMS.get(key) in known else difflib.get_close_matches(key, known, 2, 0.75)
                )
                hint = f" (did you mean {' or '.join('--' + k for k in close)}?)" if close else ""
                raise ConfigError(f"{where}unknown key '--{key}'{hint}; --help lists them")
            config[key] = coerce(key, value, known[key][0], known[key][2])
    check_ranges(config, ranges)
    if "--print_config" in argv:
        print(json.dumps(config, indent=1))
        sys.exit(0)
    return config
