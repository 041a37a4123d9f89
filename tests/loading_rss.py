"""Run under torchrun by tests/test_fsdp.py: each rank's peak host memory (RSS) while --fsdp loads a model
folder for full fine-tuning with its reference copy (β > 0), streamed from rank 0's safetensors file a tensor at
a time, and as rank 0 loading the whole model first loaded it; against the bytes of the whole model:

    torchrun --nproc_per_node 2 tests/loading_rss.py OUT D_MODEL N_LAYERS    # OUT/load{rank}.json

MALLOC_MMAP_THRESHOLD_ (set by the test) makes freed tensors leave the RSS.
"""

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from checkpoint_rss import peak_rise  # noqa: E402

from plumbing import ddp, fsdp, model  # noqa: E402


def load(folder):
    policy, _, ref, _ = model.load_policy(folder, "cpu", (0, 0, ()), False, False, 0.04, True, rank == 0, sharded=True)
    return policy, ref


with ddp.rank_end(), ddp.processes(sharded=True):  # started and ended as train.py's processes are
    rank, (out, d_model, n_layers) = dist.get_rank(), (sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
    folder = os.path.join(out, "model")
    if rank == 0:
        whole, tok = model.load("tiny", tiny_overrides=dict(d_model=d_model, n_layers=n_layers, d_ff=4 * d_model))
        model.save(whole, tok, folder)
        del whole
    dist.barrier()
    model.load(folder, empty=True)  # the model's code imported first: what is measured is the weights
    loaded = {}
    streamed, streamed_s = peak_rise(lambda: loaded.update(streamed=load(folder)))
    plain_files = model.streamed_files
    model.streamed_files = lambda name, master: None  # as before: rank 0 loads the whole model, then sends it
    rank0_whole, rank0_whole_s = peak_rise(lambda: loaded.update(whole=load(folder)))
    model.streamed_files = plain_files
    same = all(
        torch.equal(fsdp.local(a), fsdp.local(b))
        for m, n in ((0, 0), (1, 1))
        for a, b in zip(loaded["streamed"][m].parameters(), loaded["whole"][n].parameters())
    )
    digests = [fsdp.unwrap(loaded[k][0]).weights_digest for k in ("streamed", "whole")]
    whole_bytes = sum(p.numel() * p.element_size() for p in loaded["streamed"][0].parameters())
    own = sum(fsdp.local(p).numel() * p.element_size() for p in loaded["streamed"][0].parameters())
    row = dict(whole=whole_bytes, own=own, streamed=streamed, rank0_whole=rank0_whole, same=same)
    row |= dict(streamed_s=streamed_s, rank0_whole_s=rank0_whole_s, same_digest=digests[0] == digests[1])
    with open(os.path.join(out, f"load{rank}.json"), "w") as f:
        json.dump(row, f)
    dist.barrier()
