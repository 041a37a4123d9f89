import os

import pytest
import torch

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
