"""Run under torchrun by tests/test_fsdp.py: each rank's peak host memory (RSS) while a sharded model's
checkpoint is written (its start, which copies the rank's pieces to host memory, then the background write
waited for, the weights changed meanwhile) and while a fresh model and optimizer resume from it (train.py's own
save and resume), against the bytes of the whole trained tensors and AdamW's two moments, and the seconds each takes:

    torchrun --nproc_per_node 2 tests/checkpoint_rss.py OUT D_MODEL N_LAYERS    # OUT/rss{rank}.json

The model is built on the meta device and sharded before its weights exist, so no rank ever held it
whole before the measurement; MALLOC_MMAP_THRESHOLD_ (set by the test) makes freed tensors leave the RSS.
"""

import gc
import json
import os
import sys
import time
from types import SimpleNamespace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from plumbing import checkpoint, ddp, fsdp, lifecycle, optim, restore  # noqa: E402
from plumbing.tiny_llada import TinyLLaDAConfig, TinyLLaDAModel  # noqa: E402


def status_kib(field):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field + ":"))


def peak_rise(fn):
    """(the most RSS above its level at the start while fn runs, in bytes; seconds)."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak (VmHWM) starts again from the RSS now
    before, t0 = status_kib("VmRSS"), time.time()
    fn()
    return (status_kib("VmHWM") - before) * 1024, time.time() - t0


def sharded_model(d_model, n_layers):
    with torch.device("meta"):
        model = TinyLLaDAModel(TinyLLaDAConfig(vocab_size=1024, d_model=d_model, n_layers=n_layers, d_ff=4 * d_model))
    fsdp.shard(model, mixed_precision=False)
    model.to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            fsdp.local(p).normal_(0, 0.02, generator=torch.Generator().manual_seed(dist.get_rank()))
    opt, sched = optim.make_optimizer(1e-3, list(model.parameters()), 10)
    return model, opt, sched


def main(out, d_model, n_layers):
    model, opt, sched = sharded_model(d_model, n_layers)
    for p in model.parameters():  # one step: AdamW's moments exist
        p.grad = torch.full_like(p, 1e-3)
    opt.step(), sched.step(), opt.zero_grad(set_to_none=True)
    whole = 3 * sum(p.numel() * p.element_size() for p in model.parameters())  # weights + exp_avg + exp_avg_sq
    config = dict(fsdp=True, output_dir=out, save_total_limit=2, model_name_or_path="tiny")
    cfg = SimpleNamespace(**config)
    run = SimpleNamespace(master=dist.get_rank() == 0, world=dist.get_world_size())
    run.train_items = run.held_out_items = run.accuracy_before = None
    weights = {n: fsdp.local(p).clone() for n, p in model.named_parameters()}
    save, save_s = peak_rise(lambda: lifecycle.save(cfg, run, model, opt, sched, None, {}, 1))  # the write begins
    with torch.no_grad():  # training goes on while the shards are written: the checkpoint keeps the weights saved
        for p in model.parameters():
            fsdp.local(p).add_(1.0)
    write, write_s = peak_rise(lambda: (checkpoint.finish(), dist.barrier()))  # what is left of it, waited for
    del model, opt, sched
    model, opt, sched = sharded_model(d_model, n_layers)  # fresh weights, no optimizer state
    path = os.path.join(out, "checkpoint-1")
    args = (out, model, opt, sched, config)
    kw = dict(master=run.master, log=lambda *a: None, only=path, world=run.world)
    resume, resume_s = peak_rise(lambda: restore.resume(*args, **kw))
    same = all(torch.equal(fsdp.local(p), weights[n]) for n, p in model.named_parameters())
    row = dict(whole=whole, save=save, write=write, resume=resume, save_s=save_s, write_s=write_s, resume_s=resume_s)
    row |= dict(restored=same, own=whole // dist.get_world_size())
    with open(os.path.join(out, f"rss{dist.get_rank()}.json"), "w") as f:
        json.dump(row, f)


if __name__ == "__main__":  # tests/loading_rss.py imports peak_rise
    with ddp.rank_end(), ddp.processes(sharded=True):  # started and ended as train.py's processes are
        main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
        dist.barrier()
