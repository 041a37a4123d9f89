"""nanoGPT-style configuration: `python train.py [configs/x.py] [--key=value ...]`.

The script's defaults are the globals at its top; a config file is executed over them, then each
--key=value override is parsed as a Python literal (a bare word stays a string). Unknown keys and
values of the wrong type stop the script with one line naming the key, before any heavy work.
"""

import ast
import os
import sys


class ConfigError(SystemExit):
    """Exits with one line naming the problem, no traceback."""

    def __init__(self, msg):
        super().__init__(f"config error: {msg}")


def _coerce(key, value, default):
    if default is None or isinstance(value, type(default)):
        return value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, tuple) and isinstance(value, list):
        return tuple(value)
    raise ConfigError(f"--{key}={value!r} has type {type(value).__name__}, expected {type(default).__name__} (default {default!r})")


def configure(config, argv=None):
    """Apply config files and overrides in order to the dict `config` (a script's defaults)."""
    for arg in sys.argv[1:] if argv is None else argv:
        if not arg.startswith("--"):
            if not os.path.exists(arg):
                raise ConfigError(f"config file {arg} does not exist (configs/ lists the presets)")
            scope = {"__file__": os.path.abspath(arg)}  # a preset may exec a shared file beside it
            exec(open(arg).read(), scope)  # a preset is trusted Python, like nanoGPT's
            for key, value in scope.items():
                if key.startswith("_") or callable(value) or type(value).__name__ == "module":
                    continue
                if key not in config:
                    raise ConfigError(f"{arg} sets unknown key '{key}'")
                config[key] = _coerce(key, value, config[key])
            continue
        key, eq, raw = arg[2:].partition("=")
        if key not in config:
            close = [k for k in config if key.split("_")[0] in k][:3]
            raise ConfigError(f"unknown key '--{key}'" + (f" (did you mean {', '.join(close)}?)" if close else ""))
        if not eq:
            value = True  # --flag means --flag=True
        else:
            try:
                value = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                value = raw
        config[key] = _coerce(key, value, config[key])
    return config
