"""nanoGPT-style configuration: `python train.py [configs/x.py ...] [--key=value ...]`. A script's keys are the
assignments between `# --- config` and `# --- end of config`, under comment-line headings. Presets run over the
defaults, then each --key=value is read as a Python literal (a bare word stays a string). A wrong type, an unknown
key, a float not finite, a value outside the script's RANGES or not among its CHOICES stops the script in one line."""

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
INTERVAL = re.compile(r"\s*([\[(][^,\[\]()]+,[^,\[\]()]+[\])])$")  # a task option's range, ending its comment
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


def declared(script):
    """{key: (default, comment, types, heading)} of the script's config block, in order."""
    keys, heading = {}, ""
    for line in open(script).read().split(BEGIN, 1)[1].split(END, 1)[0].splitlines()[1:]:
        if match := KEY.fullmatch(line):
            key, types, default, comment = match.groups()
            types = tuple(TYPES[t.strip()] for t in types.split("|")) if types else ()
            keys[key] = (ast.literal_eval(default), comment, types, heading)
        elif line.startswith("# "):
            heading = line[2:]
    return keys


def option_ranges(path):
    """{key: interval} of a task file's generator options: the interval ending a numeric key's comment
    ("how many digits a question has [1, 6]"), so a task declares its options' ranges where it declares them."""
    found = {}
    for key, (default, comment, *_) in declared(path).items():
        if type(default) in (int, float) and (match := INTERVAL.search(comment)):
            found[key] = match.group(1)
    return found


def checked(key, value, default, types=(), interval=""):
    """value as `key` takes it: of its default's type or one of `types` (an int widened to a float, a list made a
    tuple), a finite float, inside `interval` ("[1, inf)"); anything else stops in one line."""
    if type(value) not in (type(default), *types):
        if (type(default), type(value)) not in ((float, int), (tuple, list)):
            expected = f"expected {type(default).__name__} (default {default!r})"
            raise ConfigError(f"--{key}={value!r} has type {type(value).__name__}, {expected}")
        value = type(default)(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"--{key}={value!r} must be a finite number")
    if interval:
        low, high = (float(a) ** int(b or 1) for a, _, b in (x.partition("**") for x in interval[1:-1].split(",")))
        above = low <= value if interval[0] == "[" else low < value
        below = value <= high if interval[-1] == "]" else value < high
        if not (above and below):
            raise ConfigError(f"--{key}={value!r} must be in {interval}")
    return value


def preset_values(path):
    """{name: value} a preset file sets (names starting with _, functions and modules left out)."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path} does not exist (configs/ lists the presets)")
    scope = {"__file__": os.path.abspath(path)}  # a preset may exec a shared file beside it
    try:
        exec(compile(open(path).read(), path, "exec"), scope)  # a preset is trusted Python, like nanoGPT's
    except SystemExit as e:  # sys.exit() in a preset would end the script silently, even with status 0
        lines = [f.lineno for f in traceback.extract_tb(e.__traceback__) if f.filename == path]
        raise ConfigError(
            f"config file {path}, line {(lines or '?')[-1]}: exited (sys.exit({e.code!r})) while being read: "
            "a preset only sets values"
        ) from None
    except Exception as e:  # a syntax error, or a name it uses that does not exist
        lines = [f.lineno for f in traceback.extract_tb(e.__traceback__) if f.filename == path]
        line, why = getattr(e, "lineno", None) or (lines or "?")[-1], getattr(e, "msg", None) or e
        raise ConfigError(f"config file {path}, line {line}: {type(e).__name__}: {why}") from None
    return {k: v for k, v in scope.items() if not (k.startswith("_") or callable(v) or type(v).__name__ == "module")}


def help_text(script, known, ranges, choices):
    """The script's docstring's first paragraph, the usage line as run from the repository, its keys by heading."""
    lines = [(ast.get_docstring(ast.parse(open(script).read())) or "").split("\n\n")[0], ""]
    lines.append(f"usage: python {os.path.relpath(script, ROOT)} [config.py ...] [--key=value ...] [--print_config]")
    width, heading = max(map(len, known)) + 2, ""
    for k, (default, comment, _, under) in known.items():
        lines += ["", f"{under}:"] if under != heading else []
        allowed = f"[one of {' | '.join(choices[k])}]" if k in choices else ranges.get(k, "")
        allowed = "" if comment.endswith(allowed) else allowed  # a task option's range ends its comment already
        lines.append(f"  --{k:<{width}} {default!r:<22} {comment} {allowed}".rstrip())
        heading = under
    return "\n".join(lines)


def configure(script, argv=None, option_files=(), ranges=None, choices=None):
    """The resolved config dict of `script`: its defaults and those of `option_files` (the task files'
    generator options), then presets and --key=value overrides in order. ranges {key: interval} (with those the
    task files declare, option_ranges) and choices {key: the values it may take} are checked, and --help shows
    them. --help and --print_config exit."""
    script, ranges, argv = os.path.abspath(script), ranges or {}, sys.argv[1:] if argv is None else argv
    choices = choices or {}
    known = declared(script)
    for path in option_files:
        known |= {k: (*v[:3], f"options of {os.path.relpath(path, ROOT)}") for k, v in declared(path).items()}
        ranges = {**ranges, **option_ranges(path)}
    if "--help" in argv or "-h" in argv:
        print(help_text(script, known, ranges, choices))
        sys.exit(0)
    config = {k: v[0] for k, v in known.items()}
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
                close = [s] if (s := SYNONYMS.get(key)) in known else difflib.get_close_matches(key, known, 2, 0.75)
                hint = f" (did you mean {' or '.join('--' + k for k in close)}?)" if close else ""
                raise ConfigError(f"{where}unknown key '--{key}'{hint}; --help lists them")
            config[key] = checked(key, value, known[key][0], known[key][2], ranges.get(key))
    for key, allowed in choices.items():  # the resolved value, wherever it was set (the default included)
        if config[key] not in allowed:
            raise ConfigError(f"--{key}={config[key]!r} must be one of {' | '.join(allowed)}")
    if "--print_config" in argv:
        print(json.dumps(config, indent=1))
        sys.exit(0)
    return config
