"""A checkpoint's tensors: the trained ones, by the names they are saved under, checked against the trainer
state's fingerprint (names and shapes) from the files' headers alone and read whole (safetensors, or a sharded
checkpoint's DCP files); the trainer's (optimizer, scheduler, torch RNG), read with nothing unpickled."""

import json
import os
import re

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from plumbing import sharded as sharded_ckpt
from plumbing.errors import ConfigError
from plumbing.manifest import STATE, weight_files


def fingerprint(model):
    """Names and shapes of the trained parameters: a checkpoint of another model is refused."""
    return sorted([n, list(p.shape)] for n, p in model.named_parameters() if p.requires_grad)


def saved_name(name):
    """A trained parameter's name in the checkpoint's safetensors: peft saves adapters without their
    adapter name (lora_A.weight for lora_A.default.weight); other names are saved as they are."""
    return re.sub(r"\.default(?=\.)", "", name)


def missing_tensors(path, state):
    """Why a checkpoint lacks trained tensors its fingerprint names (or holds one of another shape),
    read from the safetensors headers of the files its manifest lists (a sharded checkpoint: DCP's .metadata)
    alone; None when it has them all."""
    expected = {saved_name(name): list(shape) for name, shape in state["fingerprint"]}
    saved = {}
    files = weight_files(path)
    try:
        if state.get("layout") == sharded_ckpt.LAYOUT:
            saved = sharded_ckpt.shapes(path)
        for f in files:
            with safe_open(os.path.join(path, f), "pt") as st:
                saved |= {k: list(st.get_slice(k).get_shape()) for k in st.keys()}
    except Exception as e:  # safetensors raises its own error types on a damaged header
        return f"cannot be read ({type(e).__name__}: {str(e)[:120]})"
    return shapes_problem(expected, saved)


def shapes_problem(expected, saved):
    """Why saved {name: shape} lacks a tensor of expected {name: shape} or holds one of another shape,
    or None: an adapter file that is missing, empty or of another rank would otherwise load as
    untrained adapters (peft skips missing keys) or broadcast a (1,) tensor into a whole parameter."""
    missing = sorted(expected.keys() - saved.keys())
    if missing:
        what = (
            "no weights at all"
            if not saved
            else f"{len(missing)} of {len(expected)} trained tensors missing ({missing[0]}, ...)"
        )
        return f"is incomplete: {what}"
    wrong = next((k for k in expected if saved[k] != expected[k]), None)
    return f"is damaged: {wrong} has shape {saved[wrong]}, expected {expected[wrong]}" if wrong else None


def tensors(path):
    """The trained parameters a checkpoint holds, as saved (peft's adapter names, or the model's), read
    from the safetensors files its manifest lists (weight_files), or whole from a sharded checkpoint's files."""
    files = weight_files(path)
    try:
        if layout(path) == sharded_ckpt.LAYOUT:
            return sharded_ckpt.whole_tensors(path)
        return {k: v for f in files for k, v in load_file(os.path.join(path, f)).items()}
    except Exception as e:  # safetensors raises its own error types on a damaged file
        raise ConfigError(f"checkpoint {path} cannot be read ({type(e).__name__}: {str(e)[:120]})") from None


def layout(path):
    """How a checkpoint holds its tensors: sharded.LAYOUT (DCP's files) or None (whole, in safetensors)."""
    try:
        with open(os.path.join(path, STATE)) as f:
            state = json.load(f)
    except (OSError, ValueError):
        return None  # read() says why
    return state.get("layout") if isinstance(state, dict) else None


def trainer_tensors(path):
    """Optimizer, scheduler and torch RNG states: tensors, numbers, lists and dicts only."""
    try:
        return torch.load(os.path.join(path, "optimizer.pt"), map_location="cpu", weights_only=True)
    except Exception as e:  # missing, truncated, or holding objects that would have to be unpickled
        raise ConfigError(f"checkpoint {path} cannot be read ({type(e).__name__}: {str(e)[:120]})") from None
