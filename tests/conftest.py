import contextlib
import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from plumbing.data import chat_ids
from plumbing.model import load

# pytest -n N (xdist): the workers share the cores, so each computes on its share of them
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


@pytest.fixture(scope="session")
def tiny():
    """The embedded model at its seeded random init, and its tokenizer."""
    model, tok = load("tiny", seed=0)
    model.eval()
    return model, tok


def chat(tok, text):
    return chat_ids(tok, [{"role": "user", "content": text}])


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


class _HostReads(TorchDispatchMode):
    """Every operation whose result the host waits for: a number (item, bool, int, float go through
    _local_scalar_dense), nonzero, equal, a mask's selection or indexing, a repeat count read back."""

    def __init__(self, reads):
        super().__init__()
        self.reads = reads

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        masks = name in ("index", "index_put", "index_put_") and any(
            torch.is_tensor(t) and t.dtype == torch.bool for t in args[1]
        )
        counted = name == "repeat_interleave" and torch.is_tensor(args[-1]) and kwargs.get("output_size") is None
        if name in ("_local_scalar_dense", "nonzero", "equal", "masked_select") or masks or counted:
            self.reads.append(name)
        return func(*args, **kwargs)


@contextlib.contextmanager
def host_reads(reads=None):
    """A list (`reads`, or a new one) that collects each read of a tensor's values to the host made inside (on a
    GPU, each waits for the device's queue to drain): the dispatched ones above, and tolist (which reads memory
    directly)."""
    reads, tolist = [] if reads is None else reads, torch.Tensor.tolist

    def counted(self, *args, **kwargs):
        reads.append("tolist")
        return tolist(self, *args, **kwargs)

    torch.Tensor.tolist = counted
    try:
        with _HostReads(reads):
            yield reads
    finally:
        torch.Tensor.tolist = tolist
