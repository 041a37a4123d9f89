"""nanoGPT-style configuration: `python train.py [configs/x.py] [--key=value ...]`.

A script declares its keys as plain assignments between two marker lines, each with a comment:

    # --- config
    learning_rate = 3e-4  # AdamW step size (peak of the cosine schedule)
    # --- end of config

Those lines are the defaults, `--help` (key, default, comment) and the set of known keys: nothing
else in the script's namespace can be set. A value must have its default's type; an annotated key
(`resume_from_checkpoint: bool | str = False`) also takes the types it names. A config file is
executed over them, then each --key=value override is parsed as a Python literal (a bare word
stays a string). Unknown keys (with a "did you mean" for known names under another spelling) and
values of the wrong type stop the script with one line, before any heavy work, and so does a value
outside the interval that ends its key's comment (`# AdamW peak rate (0, 1]`) or a float that is not
finite; `--print_config` prints the resolved config as JSON and exits.
"""

import ast
import contextlib
import difflib
import io
import json
import math
import os
import re
import sys
import tokenize

BEGIN, END = "# --- config", "# --- end of config"

# other libraries' names for our keys (TRL/transformers, nanoGPT, verl, LLaDA's generate, d1): a "did you mean"
SYNONYMS = {
    "lr": "learning_rate",
    "grad_clip": "max_grad_norm",
    "out_dir": "output_dir",
    "gradient_accumulation": "gradient_accumulation_steps",
    "wandb_log": "report_to",
    "group_size": "num_generations",
    "rollout_n": "num_generations",
    "mu": "num_iterations",
    "ppo_epochs": "num_iterations",
    "clip_ratio_low": "epsilon",
    "clip_ratio_high": "epsilon_high",
    "clip_ratio": "epsilon",
    "kl_coef": "beta",
    "lora_rank": "lora_r",
    "target_modules": "lora_target_modules",
    "model_path": "model_name_or_path",
    "gen_length": "max_completion_length",
    "steps": "sampling_steps",
    "diffusion_steps": "sampling_steps",
    "remasking": "unmasking",
    "eval_steps": "eval_every",
    "resume": "resume_from_checkpoint",
    "epochs": "num_train_epochs",
    "batch_size": "per_device_train_batch_size",
}


class ConfigError(SystemExit):
    """Exits with one line naming the problem, no traceback."""

    def __init__(self, msg):
        super().__init__(f"config error: {msg}")


def declared(script):
    """{key: (default, comment)} of the assignments between the marker lines of `script`."""
    return _parse(script)[0]


TYPES = {"bool": bool, "str": str, "int": int, "float": float, "tuple": tuple}


def _parse(script):
    """declared()'s keys, and {key: types} for the annotated ones (`key: bool | str = False`)."""
    src = open(script).read()
    begin, end = src.index(BEGIN), src.index(END)
    block = src[begin:end]
    comments = {
        t.start[0]: t.string.lstrip("# ")
        for t in tokenize.generate_tokens(io.StringIO(block).readline)
        if t.type == tokenize.COMMENT
    }
    keys, also = {}, {}
    for node in ast.parse(block).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            keys[node.targets[0].id] = (ast.literal_eval(node.value), comments.get(node.lineno, ""))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            keys[node.target.id] = (ast.literal_eval(node.value), comments.get(node.lineno, ""))
            also[node.target.id] = tuple(TYPES[n.id] for n in ast.walk(node.annotation) if isinstance(n, ast.Name))
    return keys, also


def _coerce(key, value, default, also=()):
    """value, if it has the default's type (an int for a float is widened, a list for a tuple
    converted) or one of `also`, the types an annotated key takes; else one line saying why not."""
    if isinstance(value, type(default)) and not (isinstance(value, bool) and not isinstance(default, bool)):
        return value
    if type(value) in also:
        return value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, tuple) and isinstance(value, list):
        return tuple(value)
    raise ConfigError(
        f"--{key}={value!r} has type {type(value).__name__}, expected {type(default).__name__} (default {default!r})"
    )


def _unknown(key, known, where):
    close = [SYNONYMS[key]] if SYNONYMS.get(key) in known else difflib.get_close_matches(key, known, n=2, cutoff=0.75)
    hint = f" (did you mean {' or '.join('--' + k for k in close)}?)" if close else ""
    return ConfigError(f"{where}unknown key '--{key}'{hint}; --help lists them")


_NUMBER = r"\s*(-?inf|-?[\d.]+(?:e-?\d+)?|2\*\*\d+)\s*"
INTERVAL = re.compile(rf"([\[(]){_NUMBER},{_NUMBER}([\])])$")  # a comment's last words: the key's range, "(0, 1]"


def check_ranges(config, ranges):
    """Stop with one line at a float that is not finite, or at the first value outside its interval
    (ranges: {key: its comment}, which ends with the interval, as "[1, inf)")."""
    for key, value in config.items():  # inf and nan pass comparison-free checks, so none may pass here
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"--{key}={value!r} must be a finite number")
    for key, comment in ranges.items():
        interval = INTERVAL.search(comment)
        opening, low, high, closing = interval.groups()
        low, high, v = _bound(low), _bound(high), config[key]
        if not ((low <= v if opening == "[" else low < v) and (v <= high if closing == "]" else v < high)):
            raise ConfigError(f"--{key}={v!r} must be in {interval.group(0)}")


def _bound(text):
    base, _, power = text.partition("**")
    return float(base) ** int(power) if power else float(base)


@contextlib.contextmanager
def config_errors():
    """A ValueError raised inside (a malformed file, a setting a function refuses) stops the script as a
    one-line ConfigError."""
    try:
        yield
    except ValueError as e:
        raise ConfigError(str(e)) from None


def first_line(e):
    """The first line of an exception's message (its type's name when it has none): what a one-line error quotes."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _frames(e):
    tb = e.__traceback__
    while tb is not None:
        yield tb
        tb = tb.tb_next


def preset_values(path):
    """{name: value} a preset file sets (names starting with _, functions and modules left out)."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path} does not exist (configs/ lists the presets)")
    scope = {"__file__": os.path.abspath(path)}  # a preset may exec a shared file beside it
    try:
        exec(compile(open(path).read(), path, "exec"), scope)  # a preset is trusted Python, like nanoGPT's
    except Exception as e:  # a syntax error, or a name it uses that does not exist
        line = getattr(e, "lineno", None) or next(
            (t.tb_lineno for t in _frames(e) if t.tb_frame.f_code.co_filename == path), "?"
        )
        raise ConfigError(
            f"config file {path}, line {line}: {type(e).__name__}: {getattr(e, 'msg', None) or e}"
        ) from None
    return {k: v for k, v in scope.items() if not (k.startswith("_") or callable(v) or type(v).__name__ == "module")}


def help_text(script, sections):
    """The script's docstring's first paragraph, then each file's keys: default and comment."""
    doc = (ast.get_docstring(ast.parse(open(script).read())) or "").split("\n\n")[0]
    width = max(len(k) for _, keys in sections for k in keys) + 2
    lines = [
        doc,
        "",
        f"usage: python {os.path.basename(script)} [config.py ...] [--key=value ...] [--print_config]",
        "",
    ]
    for path, keys in sections:
        if path != script:
            lines += ["", f"  options of {os.path.relpath(path, os.path.dirname(script))}:"]
        lines += [f"  --{k:<{width}} {default!r:<22} {comment}" for k, (default, comment) in keys.items()]
    return "\n".join(lines)


def configure(script, argv=None, option_files=()):
    """The resolved config dict of `script`: its declared defaults and those of `option_files` (the
    task files' generator options), then config files and overrides in order. Handles --help and
    --print_config (both exit)."""
    sections, also = [], {}
    for path in (script, *option_files):
        keys, types = _parse(path)
        sections.append((path, keys))
        also.update(types)
    config = {k: default for _, keys in sections for k, (default, _) in keys.items()}
    argv = sys.argv[1:] if argv is None else argv
    if "--help" in argv or "-h" in argv:
        print(help_text(script, sections))
        sys.exit(0)
    print_config = "--print_config" in argv
    for arg in argv:
        if arg == "--print_config":
            continue
        if not arg.startswith("--"):
            for key, value in preset_values(arg).items():
                if key not in config:
                    raise _unknown(key, config, f"{arg} sets ")
                config[key] = _coerce(key, value, config[key], also.get(key, ()))
            continue
        key, eq, raw = arg[2:].partition("=")
        if key not in config:
            raise _unknown(key, config, "")
        if not eq:
            value = True  # --flag means --flag=True
        else:
            try:
                value = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                value = raw
        config[key] = _coerce(key, value, config[key], also.get(key, ()))
    check_ranges(
        config, {k: comment for _, keys in sections for k, (_, comment) in keys.items() if INTERVAL.search(comment)}
    )
    if print_config:
        print(json.dumps(config, indent=1))
        sys.exit(0)
    return config
