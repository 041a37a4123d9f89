"""The folders the scripts write: train.py's run, eval.py's results, tools/sft.py's model and tools/export.py's
export, each claimed by `claim` before any heavy work (a model load, training), so that a folder that cannot
take the output stops the script in one line while nothing is lost yet. No script deletes what it did not write:
the working folder, the repository and the shipped models/ are never an output, a whole-folder output replaces
only a folder of its own kind, and it is written beside its place and renamed into it when complete
(`write_whole`), so a failure while writing (a full disk, a kill) leaves the previous content as it was."""

import os
import re
import secrets
import shutil

from plumbing.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository
SHIPPED = os.path.join(ROOT, "models")  # the shipped base models (models/README.md)


def inside(path, folder):
    """True if `path` is `folder` or under it (both real paths)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def claim(path, what, key="--output_dir", *, whole=False, replaces=None, may_ship=False, need_bytes=0):
    """Stop in one line, naming `key` (None: a positional argument), unless `path` can hold `what` (the
    message's words): a path given; not the working folder, the repository or a folder holding either; not a
    file; not in models/ (a new or replaced model folder there only with `may_ship`); a place where a folder
    can be made; `need_bytes` free. whole=False (train.py, eval.py): the folder is made now and written into
    (the caller deletes only its own files). whole=True (tools/): `write_whole` writes it at the end; an
    existing path is refused unless it is a folder holding the file `replaces` (a folder that script wrote),
    which is then replaced. Returns the path."""

    def refuse(why):
        raise ConfigError(
            f"{key}={path} cannot hold {what} ({why})" if key else f"cannot write {what} to {path} ({why})"
        )

    if not path or not path.strip():
        raise ConfigError(f"{key + '= is empty' if key else 'an empty path'}: name the folder for {what}")
    real = os.path.realpath(path)
    for folder, name in ((os.getcwd(), "the working folder"), (ROOT, "the repository")):
        if inside(os.path.realpath(folder), real):
            refuse(f"it is {name} or holds it, whose files are not this script's to replace")
    if os.path.isfile(path) or (os.path.lexists(path) and not os.path.isdir(path)):
        refuse("it is a file")
    if inside(real, SHIPPED) and not (may_ship and os.path.dirname(real) == SHIPPED):
        refuse("it is in models/, the shipped base models; name another folder")
    if whole and os.path.lexists(path):
        if not (replaces and os.path.isfile(os.path.join(path, replaces))):
            refuse("it exists: choose a new folder")
    where = path if not whole else os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(where, exist_ok=True)
        probe = os.path.join(where, f".write-test-{os.getpid()}-{secrets.token_hex(3)}")
        os.mkdir(probe)  # what write_whole and a checkpoint do: a folder made, then renamed or filled
        os.rmdir(probe)
        free = shutil.disk_usage(where).free
    except OSError as e:  # no permission, a read-only file system, a path through a file
        through = [a for a in parents(where) if os.path.lexists(a) and not os.path.isdir(a)]
        refuse(f"{through[0]} is a file" if through else e.strerror or str(e))
    if free < need_bytes:
        refuse(f"{free / 2**20:.0f} MiB free on its disk, {need_bytes / 2**20:.0f} MiB needed")
    return path


def parents(path):
    """`path` and the folders above it, outermost first."""
    path = os.path.abspath(path)
    return [*parents(os.path.dirname(path)), path] if os.path.dirname(path) != path else [path]


def weights_bytes(folder):
    """The size of a local model folder's weight files (0 for a hub id or the embedded model): what a copy
    of its weights takes on disk, the room claim asks for."""
    if not os.path.isdir(folder):
        return 0
    files = (os.path.join(folder, f) for f in os.listdir(folder) if f.endswith((".safetensors", ".bin")))
    return sum(os.path.getsize(f) for f in files)


def write_whole(path, fill):
    """fill(folder) writes the output into a new hidden folder beside `path`, which is renamed to `path`
    once fill returns; a previous folder at `path` is moved aside first and deleted last. A failure leaves
    `path` as it was (a full disk or an unwritable place stops in one line) and no folder of this call's."""
    parent, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(parent, f".{name}.{os.getpid()}-{secrets.token_hex(3)}.tmp")
    old = tmp[: -len(".tmp")] + ".old"
    try:
        os.makedirs(parent, exist_ok=True)
        os.mkdir(tmp)
        fill(tmp)
        if os.path.lexists(path):
            os.rename(path, old)
        os.rename(tmp, path)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if os.path.lexists(old) and not os.path.lexists(path):
            os.rename(old, path)  # the rename into place failed: the previous folder goes back
        if why := os_error(e):  # a full disk, no permission
            raise ConfigError(f"cannot write {path}: {why} (nothing written there)") from None
        raise
    shutil.rmtree(old, ignore_errors=True)
    return path


def os_error(e):
    """The operating system's words for an I/O failure: an OSError's, or those safetensors' writer wraps in
    its own error ("I/O error: No space left on device (os error 28)"); None for any other exception."""
    if isinstance(e, OSError):
        return e.strerror or str(e)
    found = re.search(r"\(os error (\d+)\)", str(e))
    return os.strerror(int(found.group(1))) if found else None


def write_files(folder, fill):
    """fill(tmp) writes files into a hidden folder inside `folder`; each then replaces its namesake in `folder`
    (one rename a file): a failure while writing leaves the previous files as they were."""
    tmp = os.path.join(folder, f".{os.getpid()}-{secrets.token_hex(3)}.tmp")
    try:
        os.mkdir(tmp)
        fill(tmp)
        names = sorted(os.listdir(tmp))
        for f in names:
            os.replace(os.path.join(tmp, f), os.path.join(folder, f))
    except Exception as e:
        if why := os_error(e):
            raise ConfigError(f"cannot write {folder}: {why}") from None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return names
