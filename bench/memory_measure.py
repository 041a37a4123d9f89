"""How bench/memory.py's model of the memory is measured: what a forward keeps for backward by torch's
saved-tensor hooks, layer by layer; the LLaDA-shaped stand-in (plumbing/tiny_llada.py) in bf16 as an
update runs it; one draw's forward as agrpo.accumulate_gradients runs it; the peak resident memory of
this process; and CUDA's peaks of FSDP full fine-tuning. bench/memory.py --measure_cpu and --measure
print them against the model.
"""

import contextlib
import os
import threading
import time

import torch

from plumbing.tiny_llada import TinyLLaDAConfig, TinyLLaDAModel


def saved_by_layer(model, run):
    """(run(), {layer index or "rest": bytes}): what the forward run() keeps for backward beyond the
    parameters, by torch's saved-tensor hooks, each storage once, credited to the layer running then."""
    from plumbing.families import family_part

    layers, where, counts, seen = family_part(model, "layers"), ["rest"], {}, set()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t):
        key = t.untyped_storage().data_ptr()
        if key not in params and key not in seen:
            seen.add(key)
            counts[where[0]] = counts.get(where[0], 0) + t.untyped_storage().nbytes()
        return t

    hooks = [m.register_forward_pre_hook(lambda m, a, i=i: where.__setitem__(0, i)) for i, m in enumerate(layers)]
    hooks += [m.register_forward_hook(lambda m, a, o: where.__setitem__(0, "rest")) for m in layers]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = run()
    finally:
        for hook in hooks:
            hook.remove()
    return out, counts


def stand_in(shape, cfg, lora_r, targets):
    """The LLaDA-shaped model in bf16 as an update runs it: LoRA adapters (float32) on `targets`, or every
    weight trained but the embeddings and head (full fine-tuning: their gradients would be 2 GiB more)."""
    from plumbing.model import add_lora

    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    model = TinyLLaDAModel(TinyLLaDAConfig(**shape, mask_token_id=min(126336, shape["vocab_size"] - 1)))
    torch.set_default_dtype(default)
    if lora_r:
        return add_lora(model, lora_r, cfg["lora_alpha"], targets, under_autocast=True)
    model.model.transformer["wte"].requires_grad_(False)
    model.model.transformer["ff_out"].requires_grad_(False)
    return model


def draw_forward(model, cfg, rows, positions, prompt, read, device="cpu"):
    """A function running one draw's forward as agrpo.accumulate_gradients does before its backward (bf16
    autocast, the head on `read` positions of each row's completion, policy_logprobs with the preset's
    truncation) and returning its loss; random token ids."""
    from plumbing.families import unwrap
    from plumbing.logits import forward_logits
    from sample import policy_logprobs

    g, mask_id = torch.Generator().manual_seed(0), unwrap(model).config.mask_token_id
    ids = torch.randint(0, min(100_000, mask_id), (rows, positions), generator=g).to(device)
    at = torch.zeros(rows, positions, dtype=torch.bool, device=device)
    at[:, prompt : prompt + read] = True
    tokens = ids[at]

    def forward():
        with torch.autocast(device, dtype=torch.bfloat16):
            logits = forward_logits(model, ids, at=at)
            sampling = dict(temperature=cfg["temperature"], top_k=cfg["top_k"] or None, top_p=cfg["top_p"])
            lp = policy_logprobs(logits, mask_id=mask_id, **sampling, keep=tokens)
            return lp.gather(-1, tokens[:, None]).sum()

    return forward


@contextlib.contextmanager
def peak_rss():
    """Yields a dict whose "peak" ends as the highest resident memory of this process (bytes) inside the
    block, sampled every millisecond in the background."""
    box = {"peak": rss(), "running": True}

    def sample():
        while box["running"]:
            box["peak"] = max(box["peak"], rss())
            time.sleep(0.001)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield box
    finally:
        box["running"] = False
        thread.join()
        box["peak"] = max(box["peak"], rss())


def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measured_fsdp_full(shape, cfg, rows, tokens, prompt, read, block, checkpointing):
    """CUDA's peak allocated bytes of FSDP full fine-tuning at `shape` on this rank: (update: one draw's
    forward and backward (draw_forward) of `rows` x `tokens`, then AdamW's step; rollout: the model
    gathered, a no-grad forward with the head on one block). Random weights."""
    from plumbing import fsdp
    from plumbing.logits import forward_logits
    from plumbing.model import set_gradient_checkpointing
    from plumbing.optim import make_optimizer

    model = TinyLLaDAModel(TinyLLaDAConfig(**shape, mask_token_id=126336))  # float32 on the CPU, as train.py loads
    if checkpointing:
        set_gradient_checkpointing(model)
    fsdp.shard(model, mixed_precision=True)
    opt, _ = make_optimizer(1e-6, list(model.parameters()), total_steps=2)
    forward = draw_forward(model, cfg, rows, tokens, prompt, read, device="cuda")
    ids = torch.randint(0, 126000, (rows, tokens), device="cuda")
    bf16 = torch.autocast("cuda", dtype=torch.bfloat16)
    peaks = {}
    for _ in range(2):  # the second step is the steady state: AdamW's moments exist
        torch.cuda.reset_peak_memory_stats()
        forward().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        peaks["update"] = torch.cuda.max_memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    with torch.no_grad(), fsdp.gathered(model), bf16:
        logits = forward_logits(model, ids, at=(slice(None), slice(tokens - block, tokens))).float()
        logits - torch.rand(logits.shape, dtype=torch.float64, device="cuda").log().neg().log()  # Gumbel noise
    peaks["rollout"] = torch.cuda.max_memory_allocated()
    return peaks
