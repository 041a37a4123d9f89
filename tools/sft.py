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

This is likelihood.py's ELBO estimator read at every masked position, EOS padding included, as
LLaDA's SFT trains on its padding: the model learns where completions end (ALGORITHM.md, §5).
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

from likelihood import draws_logp, elbo_draws  # noqa: E402
from plumbing import data, outdir  # noqa: E402
from plumbing.checkpoint import sha256  # noqa: E402
from plumbing.model import load, write_model  # noqa: E402
from plumbing.model import shipped as shipped_folder  # noqa: E402
from sample import Rollout, left_pad  # noqa: E402

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
    """Prompts (left-padded) and solutions (EOS-padded to max_completion_length) as a Rollout the estimators read."""
    solution = data.task(task).solution
    prompt_ids, prompt_mask = left_pad(
        [data.build_prompt(tok, task, it, system_prompt, compact) for it in items], tok.pad_token_id
    )
    comps = torch.full((len(items), max_completion_length), tok.eos_token_id)  # the rest is EOS padding, trained too
    for i, it in enumerate(items):
        c = tok(solution(it), add_special_tokens=False).input_ids + [tok.eos_token_id]
        comps[i, : len(c)] = torch.tensor(c[:max_completion_length])
    ids = torch.cat([prompt_ids, comps], 1).to(device)
    attn = torch.cat([prompt_mask, torch.ones_like(comps)], 1).to(device)
    zeros = torch.zeros(len(items), max_completion_length, device=device)
    # the schedule fields are unused by the ELBO draws: one block, one step per token
    P = prompt_ids.shape[1]
    return Rollout(
        ids, attn, P, zeros.long(), zeros, zeros, max_completion_length, tok.mask_token_id, tuple(tok.eos_ids)
    )


def sft_loss(model, batch, draws):
    """L_SFT of the ELBO draws, averaged over draws, rows and completion positions."""
    return -(draws.weight[..., None] * draws_logp(model, batch, draws)).sum() / draws.read[0].numel()


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
        draws = elbo_draws(batch, 1, generator_for_step(step))
        loss = sft_loss(model, batch, draws)
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
