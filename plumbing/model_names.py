"""What a model's name stands for, checked before anything loads: the embedded models ("tiny", ...), the
project's shipped folders of models/ (whose weights must be the file their sft.json records), local folders
and hub ids; where a name resolves to, whether its code may run unasked, the block size its config declares."""

import json
import os
import types

from plumbing import tiny_llada
from plumbing.errors import first_line
from plumbing.families import OFFICIAL_HUB_IDS, config_block_size
from plumbing.manifest import sha256

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository


EMBEDDED = {  # the embedded model at a seeded random init, in each convention a family can have
    "tiny": (tiny_llada.TinyLLaDAConfig, tiny_llada.TinyLLaDAModel),
    "tiny_shifted": (tiny_llada.TinyShiftedConfig, tiny_llada.TinyShiftedModel),
    "tiny_block": (tiny_llada.TinyBlockConfig, tiny_llada.TinyBlockModel),
}


VERIFIED = {}  # (model.safetensors, its size and mtime) -> its sha256: each version of the file is hashed once


def shipped_weights_problem(folder):
    """None, or one line saying that a shipped model (a folder of models/) is not the file its sft.json
    records: the weights changed since they were built (or the record is missing), and runs from them would
    not be runs from the base models/README.md and the measured numbers describe."""
    folder = os.path.realpath(folder)
    if os.path.dirname(folder) != os.path.join(ROOT, "models"):
        return None
    name, weights = f"models/{os.path.basename(folder)}", os.path.join(folder, "model.safetensors")
    try:
        with open(os.path.join(folder, "sft.json")) as f:
            recorded = json.load(f)["model.safetensors sha256"]
        stat = os.stat(weights)
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{name} is a shipped model whose checksum cannot be read ({first_line(e)}): git checkout {name}"
    key = (weights, stat.st_size, stat.st_mtime_ns)
    if key not in VERIFIED:
        VERIFIED[key] = sha256(weights)
    if VERIFIED[key] != recorded:
        return (
            f"{name}/model.safetensors is not the shipped model (sha256 {VERIFIED[key][:12]}…, its sft.json records "
            f"{recorded[:12]}…): `git checkout {name}` restores it; tools/sft.py rebuilds it with its own record"
        )
    return None


def shipped(name):
    """`name`, or the project's own models/ folder of that name when run from elsewhere."""
    here = os.path.join(ROOT, name)
    return here if name.startswith("models/") and not os.path.exists(name) and os.path.isdir(here) else name


def resolved(name):
    """What a model is recorded as: a local folder (a shipped one too) by absolute path, so configs,
    checkpoints and peft's adapter_config load from any folder; a hub id or "tiny" as given."""
    name = shipped(name)
    return os.path.abspath(name) if os.path.isdir(name) else name


def is_shipped_or_official(name):
    """A model whose code may run without being named by the user: the embedded model, the project's own
    models/ folders, and the families' released hub ids (families.OFFICIAL_HUB_IDS)."""
    path = os.path.realpath(shipped(name)) if os.path.exists(shipped(name)) else None
    if path:
        return path.startswith(os.path.join(ROOT, "models") + os.sep)
    return name in EMBEDDED or name in OFFICIAL_HUB_IDS


def model_path_error(name):
    """None if `name` can be loaded as given ("tiny", an existing path, or a hub id "org/name"),
    else one line saying why not. Checked by the scripts before any heavy work."""
    name = shipped(name)
    if name in EMBEDDED:
        return None
    if os.path.isdir(name):
        return missing_model_files(name) or shipped_weights_problem(name)
    if os.path.exists(name):
        return f"{name} is a file; a model is a folder (config.json, tokenizer files, weights) or a hub id"
    # runs/ is where this project writes, so runs/x is a missing run folder, never a hub id
    looks_local = (
        name.startswith((".", "/", "~", "runs/", "models/"))
        or name.count("/") != 1
        or os.path.isdir(name.split("/")[0])
    )
    if looks_local:
        return (
            f"{name} does not exist (give 'tiny', a local model directory, or a hub id like GSAI-ML/LLaDA-8B-Instruct)"
        )
    return None


def declared_block_size(name):
    """The block size a model's config declares (families.config_block_size), read without loading it: 0 for a
    bidirectional model; None where only loading tells (a hub id, no config.json, a family this code does not
    know: the load says which)."""
    name = shipped(name)
    if name in EMBEDDED:
        config = EMBEDDED[name][0]()
    elif os.path.isfile(path := os.path.join(name, "config.json")):
        try:
            config = types.SimpleNamespace(**json.load(open(path)))
        except (ValueError, TypeError, OSError):
            return None
    else:
        return None
    try:
        return config_block_size(config)
    except (ValueError, TypeError):
        return None


def missing_model_files(folder):
    """One line naming what a local model folder lacks (config, tokenizer, weights), or None."""
    files = set(os.listdir(folder))
    if "config.json" not in files:
        return f"{folder} has no config.json: not a model folder"
    if not files & {"tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json"}:
        return f"{folder} has no tokenizer files (tokenizer.json, tokenizer_config.json): save the tokenizer there"
    if not any(f.endswith((".safetensors", ".bin")) for f in files):
        return f"{folder} has no weights (model.safetensors or pytorch_model.bin, or their shards)"
    return None
