"""The embedded base model: supervised masked-diffusion training (LLaDA's SFT loss) of the embedded
model on generated solutions, so that AGRPO starts from a policy whose rewards are not all zero.
It plays the part LLaDA-8B-Instruct plays on the real path: trained once, shipped in models/ with
the command that made it and a checksum (models/README.md), loaded by train.py and the comparisons.

    python tools/sft.py --output_dir=runs/sft-countdown              # a new model folder
    python tools/sft.py --overwrite_output_dir                       # rebuilds the shipped models/tiny-countdown
    python tools/sft.py --task=sudoku --sudoku_blanks="(10,10)" --max_steps=300 --max_completion_length=24 \\
        --output_dir=models/tiny-sudoku --overwrite_output_dir

The output folder is checked before training (outdir.claim) and written whole at the end: a folder that holds
anything but a model this script wrote is never replaced, and one it wrote (the shipped models too) only with
--overwrite_output_dir, the new sft.json recording the new checksum.

With o the G completion tokens (the solution, then EOS padding), l ~ U{1..G} of them masked
uniformly at random (x_l) and the prompt never masked:

    L_SFT(θ) = −E_l E_{x_l} [ (G/l) Σ_{masked j} log p_θ(o_j | prompt, x_l) ] / G

with l stratified over the batch, every masked position scored (EOS padding included: the model learns
where completions end) and log p read as the estimators read it, [MASK] removed from the distribution. It
is likelihood.py's ELBO draw on the same masks (ALGORITHM.md §5; tests/test_sft.py checks the two agree to
the bit). A block model (tiny_block) is trained in SDAR's layout: the clean sequence and a noisy copy of
each block that holds a masked position, the copy seeing the clean blocks before it and itself.
"""

import json
import math
import os
import random
import subprocess
import sys
import time

import torch
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as tools/*.py

from plumbing import data, outdir  # noqa: E402
from plumbing.block_attention import block_of, causal_mask, positions  # noqa: E402
from plumbing.families import block_size, family_of  # noqa: E402
from plumbing.logits import forward_logits, selected_logits  # noqa: E402
from plumbing.manifest import sha256  # noqa: E402
from plumbing.model import load, write_model  # noqa: E402
from plumbing.model import shipped as shipped_folder  # noqa: E402

# --- config
model_name_or_path = "tiny"  # the model trained: tiny | tiny_shifted | tiny_block (embedded, seeded init) or a folder
task = "countdown"  # a task of tasks/ with a generator and solutions: countdown | sudoku (their options: --help)
system_prompt = ""  # system turn of the prompts ("" = none, as the embedded default trains with)
compact_prompt = True  # short question text, as the embedded default
max_completion_length = 16  # G: solutions (with their EOS) must fit; the rest is EOS padding
max_steps = 2500  # AdamW steps
learning_rate = 2e-3  # peak rate: warmup over 50 steps, cosine decay to 0
batch_size = 64  # solutions per step, drawn from 20,000 generated training problems
seed = 0  # the model's init, the problems, the batches and the masks
output_dir = "models/tiny-countdown"  # the model folder written (config, safetensors, tokenizer, sft.json)
overwrite_output_dir = False  # replace an output_dir holding a model this script wrote (the shipped ones too)
# --- end of config

# SFT needs a task with a generator and solutions
CHOICES = dict(
    task=tuple(n for n in data.TASK_NAMES if all(hasattr(data.task(n), f) for f in ("generate", "solution")))
)
RANGES = dict(
    max_completion_length="[1, inf)", max_steps="[1, inf)", learning_rate="(0, 1]", batch_size="[1, inf)",
    seed="[0, 2**63)",
)  # fmt: skip


def sft_batch(tok, task, items, *, max_completion_length, system_prompt="", compact=True, device="cpu"):
    """(ids, attention_mask, P): the prompts left-padded to P tokens, then each solution and its EOS, EOS-padded
    to max_completion_length."""
    solution = data.task(task).solution
    prompt_ids, prompt_mask = data.left_pad(
        [data.build_prompt(tok, task, it, system_prompt, compact) for it in items], tok.pad_token_id
    )
    comps = torch.full((len(items), max_completion_length), tok.eos_token_id)  # the rest is EOS padding, trained too
    for i, it in enumerate(items):
        c = tok(solution(it), add_special_tokens=False).input_ids + [tok.eos_token_id]
        comps[i, : len(c)] = torch.tensor(c[:max_completion_length])
    ids = torch.cat([prompt_ids, comps], 1).to(device)
    return ids, torch.cat([prompt_mask, torch.ones_like(comps)], 1).to(device), prompt_ids.shape[1]


def mask_completions(batch, mask_id, generator):
    """(x_l, masked (B, G), G/l (B,)): l ~ U{1..G} per row, stratified over the batch (one u in each of the B
    strata of [0, 1), in random order), and the l positions of lowest rank under uniform scores masked."""
    ids, _, P = batch
    B, G = ids.shape[0], ids.shape[1] - P
    u = torch.rand(B, generator=generator, dtype=torch.float64)
    u = (torch.randperm(B, generator=generator).double() + u) / B
    n_masked = (1 + (u * G).long()).clamp(max=G)
    rank = torch.rand((B, G), generator=generator).argsort(-1).argsort(-1)
    masked = (rank < n_masked[:, None]).to(ids.device)
    x = ids.clone()
    x[:, P:] = x[:, P:].masked_fill(masked, mask_id)
    return x, masked, (G / n_masked.float()).to(ids.device)


def block_copies(ids, attention_mask, x, masked, P, size):
    """A block model's input scoring every masked position given the clean blocks before its own: [ids ; one
    copy of x's block for each block holding a masked position, a row's first ones first], each copy at its
    block's positions, seeing the real clean positions before its block and itself (a row's spare copies, up
    to the most any row needs, score nothing; a last block may end past L). Returns the input, its model
    arguments, the positions scored (a bool mask of it) and their (row, completion column). The layout is
    blocks.packed_states' for one draw (a tool imports no root file): test_sft holds the two equal to the bit."""
    (B, L), device = ids.shape, ids.device
    block = block_of(attention_mask, size)
    local = block[:, P:] - block[:, P : P + 1]  # each completion position's block, from the row's first
    wanted = ((local[..., None] == torch.arange(int(local.max()) + 1, device=device)) & masked[..., None]).any(1)
    C = max(int(wanted.sum(1).max()), 1)
    order = torch.sort((~wanted).long(), dim=1, stable=True).indices[:, :C]
    valid = wanted.gather(1, order)
    first = L - attention_mask.long().sum(1) + block[:, P] * size  # each row's first completion block
    columns = first[:, None, None] + order.masked_fill(~valid, 0)[..., None] * size + torch.arange(size, device=device)
    exists, columns = columns < L, columns.clamp(max=L - 1)
    rows = torch.arange(B, device=device)[:, None, None].expand(columns.shape)
    scored = masked[rows, (columns - P).clamp(min=0)] & (columns >= P) & exists & valid[..., None]
    mask = torch.zeros((B, 1, L + C * size, L + C * size), dtype=torch.bool, device=device)
    mask[:, :, :L, :L] = causal_mask(attention_mask, size)
    copy = torch.arange(C, device=device).repeat_interleave(size)
    itself = torch.eye(C * size, dtype=torch.bool, device=device)  # a position past the end sees itself
    mask[:, 0, L:, L:] = (copy[:, None] == copy) & exists.flatten(1)[:, None] | itself
    before = torch.arange(L, device=device) < columns[:, :, :1].repeat_interleave(size, 1)
    mask[:, 0, L:, :L] = before & attention_mask.bool()[:, None]
    position = positions(attention_mask)
    call = dict(attention_mask=mask, position_ids=torch.cat([position, position.gather(1, columns.flatten(1))], 1))
    at = torch.cat([torch.zeros_like(ids, dtype=torch.bool), scored.flatten(1)], 1)
    return torch.cat([ids, x[rows, columns].flatten(1)], 1), call, at, (rows[scored], (columns - P)[scored])


def sft_loss(model, batch, noised, mask_id):
    """L_SFT of one masking `noised` = mask_completions(batch, ...), averaged over rows and completion positions.
    log p is the estimators' (sample.policy_logprobs at temperature 0): float32, [MASK] removed."""
    (ids, attention_mask, P), (x, masked, weight) = batch, noised
    if block_size(model) and family_of(model).shift == 0:
        inputs, call, at, where = block_copies(ids, attention_mask, x, masked, P, block_size(model))
        logits = selected_logits(model, inputs, call, at)
    else:
        at = torch.cat([torch.zeros_like(ids[:, :P], dtype=torch.bool), masked], 1)
        logits, where = forward_logits(model, x, attention_mask, at=at), masked.nonzero(as_tuple=True)
    logits = logits.float()
    logits[:, mask_id] = float("-inf")
    logp = logits.log_softmax(-1).gather(-1, ids[:, P:][where][:, None]).squeeze(-1)
    per_position = torch.zeros(masked.shape, device=ids.device).index_put(where, logp)  # 0 where not masked
    return -(weight[:, None] * per_position).sum() / masked.numel()


def train(
    model,
    tok,
    task,
    items,
    *,
    max_steps,
    max_completion_length,
    rng,
    generator_for_step,
    lr=2e-3,
    batch_size=64,
    system_prompt="",
    compact=True,
    show=True,
):
    """`max_steps` AdamW steps of L_SFT on batches drawn by `rng` (a random.Random) from `items`, whose
    solutions must fit max_completion_length with their EOS; warmup over 50 steps, cosine decay.
    generator_for_step(step) gives the torch.Generator of that step's masks. Returns (the model
    with no gradient left in .grad, the last step's loss)."""
    device = next(model.parameters()).device
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.99))
    model.train()
    bar = tqdm(range(max_steps), desc="SFT", disable=not show)
    loss = torch.tensor(float("nan"))
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / max_steps))
        batch = sft_batch(
            tok, task, rng.sample(items, batch_size), max_completion_length=max_completion_length,
            system_prompt=system_prompt, compact=compact, device=device,
        )  # fmt: skip
        loss = sft_loss(
            model, batch, mask_completions(batch, tok.mask_token_id, generator_for_step(step)), tok.mask_token_id
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.zero_grad(set_to_none=True)
    return model.eval(), loss.item()


def main():
    from plumbing.configurator import configure
    from plumbing.errors import ConfigError, config_errors

    cfg = configure(__file__, option_files=data.option_files(), ranges=RANGES, choices=CHOICES)
    t = data.task(cfg["task"])
    out, overwrite = cfg["output_dir"], cfg["overwrite_output_dir"]
    if out and os.path.isfile(os.path.join(out, "sft.json")) and not overwrite:
        shipped = (
            " (a shipped base model, models/README.md)" if outdir.inside(os.path.realpath(out), outdir.SHIPPED) else ""
        )
        raise ConfigError(
            f"--output_dir={out} holds a model tools/sft.py wrote{shipped}: --overwrite_output_dir replaces it "
            "once the new one is trained, or choose a new folder"
        )
    claim = dict(whole=True, replaces="sft.json" if overwrite else None, may_ship=True)
    outdir.claim(out, "the model", **claim, need_bytes=outdir.weights_bytes(shipped_folder(cfg["model_name_or_path"])))
    with config_errors():
        data.check_task_options(cfg["task"], cfg)
        model, tok = load(cfg["model_name_or_path"], seed=cfg["seed"])
    outdir.claim(out, "the model", **claim, need_bytes=sum(p.numel() * p.element_size() for p in model.parameters()))
    items = data.load_items(cfg["task"], "train", n=20_000, seed=cfg["seed"], **data.task_options(cfg["task"], cfg))
    fits = [
        it
        for it in items
        if len(tok(t.solution(it), add_special_tokens=False).input_ids) < cfg["max_completion_length"]
    ]
    if len(fits) < cfg["batch_size"]:
        raise ConfigError(
            f"--max_completion_length={cfg['max_completion_length']}: only {len(fits)} solutions fit (with EOS)"
        )
    start = time.time()
    masks = lambda s: torch.Generator().manual_seed(cfg["seed"] * 1_000_003 + s)  # noqa: E731
    model, loss = train(
        model,
        tok,
        cfg["task"],
        fits,
        max_steps=cfg["max_steps"],
        max_completion_length=cfg["max_completion_length"],
        rng=random.Random(cfg["seed"] + 1),
        generator_for_step=masks,
        lr=cfg["learning_rate"],
        batch_size=cfg["batch_size"],
        system_prompt=cfg["system_prompt"],
        compact=cfg["compact_prompt"],
    )
    here = os.path.dirname(os.path.abspath(__file__))
    commit = (
        subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=here).stdout.strip()
        or "unknown"
    )
    if subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, cwd=here
    ).stdout.strip():
        commit += " with uncommitted changes"
    record = {
        "command": " ".join(["python", "tools/sft.py", *sys.argv[1:]]),
        "config": cfg,
        "commit": commit,
        "torch": torch.__version__,
        "minutes": round((time.time() - start) / 60, 1),
        "final_loss": round(loss, 4),
    }

    def fill(folder):  # the model and its record, renamed into place together
        write_model(model, tok, folder)
        record["model.safetensors sha256"] = sha256(os.path.join(folder, "model.safetensors"))
        with open(os.path.join(folder, "sft.json"), "w") as f:
            json.dump(record, f, indent=1)

    outdir.write_whole(out, fill)
    if outdir.inside(os.path.realpath(out), outdir.SHIPPED):
        print(f"replaced the shipped {out} with this model: `git checkout {out}` restores it", file=sys.stderr)
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
