"""One-line errors: every problem a user can fix stops the script with one line naming it (file, line,
key or model), never a traceback from deep inside torch or transformers."""

import contextlib


class ConfigError(SystemExit):
    """Exits with one line naming the problem, no traceback."""

    def __init__(self, msg):
        super().__init__(f"config error: {msg}")


@contextlib.contextmanager
def config_errors():
    """A ValueError raised inside (a malformed file, a setting a function refuses) stops as a ConfigError."""
    try:
        yield
    except ValueError as e:
        raise ConfigError(str(e)) from None


def first_line(e):
    """The first line of an exception's message (its type's name when it has none): what a one-line error quotes."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
