"""AGRPO training: roll out G completions per prompt, score them, and take PPO-clip steps on the
stepwise log-likelihood (agrpo.py). One process, or `torchrun --nproc_per_node 8 train.py ...`.

    python train.py                                   # embedded default: tiny model, Countdown
    python train.py configs/llada_gsm8k.py --lr=1e-6  # a preset, then overrides

With no arguments it warm-starts the embedded model by supervised masked-diffusion training on
generated Countdown solutions (cached in out_dir/warm_start), runs AGRPO, and prints held-out
greedy accuracy before and after.
"""

import contextlib
import hashlib
import json
import math
import os
import random
import time

import torch
import torch.distributed as dist
from tqdm import tqdm

import checkpoint
import data
import sft
from agrpo import backward_draws, group_advantages, prepare
from configurator import ConfigError, configure
from eval import decode_completions, evaluate
from likelihood import ESTIMATORS, SCHEMES
from model import add_lora, compile_blocks, load, model_path_error, save_tiny_checkpoint, set_gradient_checkpointing, unwrap
from sample import check_settings, generate

# ---------------------------------------------------------------------------------------------
# defaults = the embedded default (configs/tiny_countdown.py); presets in configs/ override them
model_name = "tiny"  # "tiny", a tiny checkpoint dir, or a LLaDA name/path
task = "countdown"  # gsm8k | math | countdown | sudoku
train_file = ""  # local JSONL/CSV/Parquet; "" = generated (countdown, sudoku) or the hub (gsm8k, math)
eval_file = ""
system_prompt = ""  # "" for the tiny model (character tokens); presets for LLaDA use data.SYSTEM_PROMPT
compact_prompt = True  # short question text, for the tiny model
num_range = (1, 9)  # Countdown generator knobs
target_range = (1, 99)
countdown_ops = "+-*/"
sudoku_blanks = 6
out_dir = "runs/tiny_countdown"
seed = 0
# warm start (embedded model only): supervised masked-diffusion training on generated solutions
warm_start_steps = 2500
warm_start_lr = 2e-3
warm_start_batch = 64
warm_start_think = False  # Countdown solutions with or without the <think> block
# rollout (sample.py)
gen_length = 16
block_length = 8
steps = 4  # 4 tokens per step: the embedded default trains (and evaluates) fast, parallel decoding
temperature = 0.7
top_k = 0  # 0 = off
top_p = 1.0
remasking = "low_confidence"  # random (the paper) lowered greedy held-out accuracy more here; see README
# AGRPO (agrpo.py, likelihood.py)
estimator = "stepwise"  # stepwise | elbo | one_step
scheme = "low_discrepancy"  # exact | uniform | low_discrepancy | entropy
mc_steps = 2  # k: forward passes per sequence per inner iteration (k of the m = steps)
mu = 1  # inner iterations per rollout batch
eps_low = 0.2
eps_high = 0.2
beta = 0.0  # k3 KL weight; 0 runs no reference pass
scale_std = False
prompt_mask_prob = 0.15  # one_step only
group_size = 8
groups_per_micro = 8  # prompt groups per micro-batch per rank
grad_accum = 1
# optimisation
max_steps = 1000
lr = 3e-4
weight_decay = 0.01
beta1 = 0.9
beta2 = 0.99
grad_clip = 1.0
warmup_frac = 0.01
lora_rank = 0  # 0 = full fine-tuning (tiny); 64 for LLaDA
lora_alpha = 64
gradient_checkpointing = False
dtype = "float32"  # float32 | bfloat16: the weights
autocast = True  # bf16 autocast of forward and backward passes on CUDA (the sampler's Gumbel noise stays float64)
compile = False  # torch.compile each transformer block of the policy (model.compile_blocks)
# evaluation (greedy, low-confidence remasking)
eval_items = 200
eval_gen_length = 16
eval_block_length = 8
eval_steps = 4  # as the rollouts; eval.py gives the whole grid (m = 4, 8, 16)
eval_batch = 100
eval_before = True
eval_after = True
# logging and checkpoints
ckpt_every = 50
keep_checkpoints = 2
stop_after = 0  # stop after this many steps without changing the schedule (0 = run to max_steps)
resume = False
max_nonfinite = 20  # this many skipped (non-finite) updates in a row stop the run
# fault injection, for tests/test_reliability.py only
fault_nan_steps = ()  # steps whose advantages are made NaN (the update must be skipped)
fault_kill_in_save = 0  # SIGKILL this process halfway through writing the checkpoint of this step
wandb = False
# ---------------------------------------------------------------------------------------------
config = {k: v for k, v in globals().items() if not k.startswith("_") and isinstance(v, (int, float, bool, str, tuple))}
configure(config)
globals().update(config)


def validate():
    """Every impossible combination stops here, before any heavy work, with the key and the fix."""
    try:
        data.task(task)
        check_settings(gen_length, block_length, steps, temperature, remasking, top_k or None, top_p)
        check_settings(eval_gen_length, eval_block_length, eval_steps)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if estimator not in ESTIMATORS:
        raise ConfigError(f"--estimator={estimator!r} must be one of {ESTIMATORS}")
    if scheme not in SCHEMES:
        raise ConfigError(f"--scheme={scheme!r} must be one of {SCHEMES}")
    if not 1 <= mc_steps <= steps:
        raise ConfigError(f"--mc_steps={mc_steps} must be between 1 and --steps={steps} (the number of sampling steps)")
    for key in ("group_size", "groups_per_micro", "grad_accum", "mu", "max_steps"):
        if config[key] < 1:
            raise ConfigError(f"--{key}={config[key]} must be at least 1")
    if group_size < 2:
        raise ConfigError(f"--group_size={group_size}: group-relative advantages need at least 2 completions per prompt")
    if dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"--dtype={dtype!r} must be float32 or bfloat16")
    for key in ("train_file", "eval_file"):
        if config[key] and not os.path.exists(config[key]):
            raise ConfigError(f"--{key}={config[key]} does not exist")
    problem = model_path_error(model_name)
    if problem:
        raise ConfigError(f"--model_name: {problem}")


validate()

# ---------------------------------------------------------------------------------------------
# processes, devices
ddp = int(os.environ.get("WORLD_SIZE", 1)) > 1
if ddp:
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = f"cuda:{int(os.environ['LOCAL_RANK'])}" if torch.cuda.is_available() else "cpu"
    if torch.cuda.is_available():
        torch.cuda.set_device(device)
else:
    rank, world = 0, 1
    device = "cuda" if torch.cuda.is_available() else "cpu"
master = rank == 0
torch_dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
os.makedirs(out_dir, exist_ok=True)


use_amp = autocast and device.startswith("cuda")


def amp():
    return torch.autocast("cuda", dtype=torch.bfloat16) if use_amp else contextlib.nullcontext()


def log(*a):
    if master:
        tqdm.write(" ".join(str(x) for x in a))


def seeded(*key, device="cpu"):
    """A generator seeded by (seed, *key): the same on every rank and in every partition of work."""
    digest = hashlib.sha256(repr((seed, *key)).encode()).hexdigest()  # not hash(): salted per process
    return torch.Generator(device=device).manual_seed(int(digest[:15], 16))


def fetch_items():
    gen = data.generator_knobs(task, config)
    # generated tasks: train and test come from disjoint parts of the problem space (data.split_of)
    train = data.load_items(task, "train", train_file or None, n=20_000 if task in ("countdown", "sudoku") else None, seed=seed, **gen)
    return train, data.test_set(task, eval_file, eval_items, seed, **gen)


def eval_accuracy(model, tok, items, label):
    with amp():  # the rollouts' precision (and adapters added under_autocast need it)
        res = evaluate(
            model, tok, task, items, gen_length=eval_gen_length, block_length=eval_block_length, steps=eval_steps,
            batch_size=eval_batch, system_prompt=system_prompt, compact=compact_prompt, rank=rank, world=world, desc=label,
        )  # fmt: skip
    acc = sum(r["accuracy"] for r in res) / max(1, len(res))
    return acc, res


def warm_start(model, tok, train_items):
    """The embedded model's SFT warm start (sft.py), cached in out_dir/warm_start."""
    path = os.path.join(out_dir, "warm_start")
    if os.path.exists(os.path.join(path, "tiny_config.json")):
        log(f"warm start: loading cached {path}")
        return load(path, device=device)[0]
    if task not in sft.TASKS:
        raise ConfigError(f"the warm start needs generated solutions: task={task!r} has none (use a LLaDA model)")
    n_tokens = [len(tok(sft.solution_text(task, it, warm_start_think), add_special_tokens=False).input_ids) for it in train_items]
    fits = [it for it, n in zip(train_items, n_tokens) if n < gen_length]
    if len(fits) < warm_start_batch:
        raise ConfigError(f"--gen_length={gen_length}: only {len(fits)} training solutions fit (with EOS); the warm start needs more")
    model = sft.train(
        model, tok, task, fits, steps=warm_start_steps, lr=warm_start_lr, batch_size=warm_start_batch, gen_length=gen_length,
        rng=random.Random(seed + 1), generator_for_step=lambda step: seeded("sft", step), system_prompt=system_prompt,
        compact=compact_prompt, think=warm_start_think, show=master,
    )  # fmt: skip
    if master:
        save_tiny_checkpoint(model, path)
    return model


# ---------------------------------------------------------------------------------------------
# the run
torch.manual_seed(seed)
try:
    model, tok = load(model_name, device=device, dtype=torch_dtype if model_name != "tiny" else None)
except ValueError as e:  # the model cannot be loaded, or its tokenizer does not fit it
    raise ConfigError(f"--model_name: {e}") from None
train_items, test_items = fetch_items()
base_model = model_name  # what the trained parameters sit on, for eval.py to rebuild
if model_name == "tiny":
    model = warm_start(model, tok, train_items)
    base_model = os.path.join(out_dir, "warm_start")
if lora_rank > 0:
    model = add_lora(model, lora_rank, lora_alpha, under_autocast=use_amp)  # every forward below runs in amp()
if gradient_checkpointing:
    set_gradient_checkpointing(model)
ref_model = None
if beta > 0:
    if lora_rank > 0:
        ref_model = model  # with adapters disabled (below) this is the base model
    else:
        import copy

        ref_model = copy.deepcopy(unwrap(model)).eval().requires_grad_(False)
if compile:
    compile_blocks(model)

acc_before = None
if eval_before:
    acc_before, _ = eval_accuracy(model, tok, test_items, "eval before")
    log(f"held-out accuracy before AGRPO: {acc_before:.3f} ({len(test_items)} items, greedy)")

params = [p for p in model.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=lr, betas=(beta1, beta2), weight_decay=weight_decay)
warmup = max(1, int(warmup_frac * max_steps))
sched = torch.optim.lr_scheduler.LambdaLR(
    opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / max_steps)))
)
start, counters = 0, {"nonfinite_total": 0, "nonfinite_in_a_row": 0}
must_match = ("model_name", "task", "lora_rank", "estimator", "group_size", "gen_length")  # else a resume is another run
log_path = os.path.join(out_dir, "log.jsonl")
path = checkpoint.newest(out_dir) if resume else None
if path:
    state = checkpoint.read(path)
    start = checkpoint.restore(path, state, model, opt, sched, config, must_match)
    counters.update(state.get("counters", {}))
    if master:  # the steps after the checkpoint are run again: drop their log lines (and a half-written one)
        checkpoint.truncate_log(log_path, start)
        checkpoint.remove_partial(out_dir)
    log(f"resumed from {path} (step {start})")
elif resume:
    log(f"--resume: no checkpoint in {out_dir}, starting fresh")
train_model = torch.nn.parallel.DistributedDataParallel(model) if ddp else model
reward_fn, accuracy_fn = data.task(task)["reward"], data.task(task)["accuracy"]
if wandb and master:
    try:
        import wandb as wb

        wb.init(project="agrpo", config=config, dir=out_dir)
    except ImportError:
        log("wandb is not installed; logging to log.jsonl only")
        wandb = False

n_micro = grad_accum * world  # micro-batches per optimizer step, over all ranks
last_step = min(max_steps, stop_after) if stop_after else max_steps
bar = tqdm(range(start, last_step), desc="AGRPO", initial=start, total=max_steps, disable=not master)
for step in bar:
    t0 = time.time()
    order = torch.randperm(len(train_items), generator=seeded("prompts", step))[: groups_per_micro * n_micro].tolist()
    batches = []
    for a in range(grad_accum):
        micro = a * world + rank  # the global micro-batch index: the same work in any partition
        items = [train_items[i] for i in order[micro * groups_per_micro : (micro + 1) * groups_per_micro]]
        prompts = [data.build_prompt(tok, task, it, system_prompt, compact_prompt) for it in items for _ in range(group_size)]
        unwrap(model).eval()
        with amp():
            rollout = generate(
                unwrap(model),
                prompts,
                gen_length=gen_length,
                block_length=block_length,
                steps=steps,
                mask_id=tok.mask_token_id,
                eos_ids=tok.eos_ids,
                temperature=temperature,
                top_k=top_k or None,
                top_p=top_p,
                remasking=remasking,
                pad_id=tok.pad_token_id,
                generator=seeded("rollout", step, micro, device=device),  # the Gumbel noise is drawn on the GPU
            )
        texts, lengths = decode_completions(tok, rollout)
        answers = [data.answer_of(task, it) for it in items for _ in range(group_size)]
        rewards = torch.tensor([reward_fn(t, a) for t, a in zip(texts, answers)])
        accs = torch.tensor([float(accuracy_fn(t, a)) for t, a in zip(texts, answers)])
        advantages = group_advantages(rewards, group_size, scale_std).to(device)
        if step + 1 in fault_nan_steps:
            advantages = advantages * float("nan")
        unwrap(model).train()
        with amp():
            draws, old, ref = prepare(
                model, rollout, estimator, mc_steps, mu, seeded("draws", step, micro), scheme, ref_model, prompt_mask_prob
            )
        batches.append((rollout, draws, old, ref, advantages, rewards, accs, lengths))

    loss_sum, metrics, skipped = 0.0, {}, 0
    for it in range(mu):
        for a, (rollout, draws, old, ref, advantages, *_) in enumerate(batches):
            with amp():
                loss, m = backward_draws(
                    train_model, rollout, draws[it], old[it], advantages, None if ref is None else ref[it],
                    eps_low, eps_high, beta, scale=1.0 / grad_accum, sync=a == grad_accum - 1,
                )  # fmt: skip
            loss_sum += loss / grad_accum
            metrics = {k: metrics.get(k, 0.0) + v for k, v in m.items()}
        grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
        if torch.isfinite(grad_norm):  # all-reduced under DDP, so every rank decides the same
            opt.step()
            counters["nonfinite_in_a_row"] = 0
        else:  # a NaN/inf loss or gradient never reaches the weights or the Adam moments
            skipped += 1
            counters["nonfinite_total"] += 1
            counters["nonfinite_in_a_row"] += 1
        opt.zero_grad(set_to_none=True)
    sched.step()

    stats = torch.tensor(
        [
            torch.cat([b[5] for b in batches]).mean(),
            torch.cat([b[6] for b in batches]).mean(),
            torch.cat([b[7] for b in batches]).float().mean(),
            loss_sum / mu,
            metrics["kl"] / max(1, metrics["tokens"]),
            metrics["clipped"] / max(1, metrics["tokens"]),
        ]
    ).to(device)  # NCCL reduces GPU tensors only
    if ddp:
        dist.all_reduce(stats)
        stats /= world
    row = dict(zip(["reward", "accuracy", "completion_length", "loss", "kl", "clip_frac"], stats.tolist()))
    row.update(step=step + 1, grad_norm=float(grad_norm), lr=sched.get_last_lr()[0], seconds=time.time() - t0)
    row.update(skipped=skipped, nonfinite_total=counters["nonfinite_total"])
    if master:
        with open(log_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if wandb:
            wb.log(row, step=step + 1)
        bar.set_postfix(
            reward=f"{row['reward']:.2f}",
            acc=f"{row['accuracy']:.2f}",
            loss=f"{row['loss']:.3f}",
            kl=f"{row['kl']:.3f}",
            clip=f"{row['clip_frac']:.3f}",
            len=f"{row['completion_length']:.1f}",
            s=f"{row['seconds']:.1f}",
        )
    if counters["nonfinite_in_a_row"] >= max_nonfinite:
        newest = checkpoint.newest(out_dir) or "none written yet"
        raise SystemExit(
            f"stopping at step {step + 1}: {counters['nonfinite_in_a_row']} non-finite updates in a row (all skipped; "
            f"weights untouched since the last good step). Last checkpoint: {newest}. Lower --lr or check the rewards."
        )
    if (step + 1) % ckpt_every == 0 or step + 1 == last_step:
        if master:
            kill = fault_kill_in_save == step + 1
            checkpoint.save(out_dir, step + 1, model, opt, sched, config, keep_checkpoints, base_model, counters, _kill_midway=kill)
        if ddp:
            dist.barrier()

if eval_after:
    acc_after, results = eval_accuracy(model, tok, test_items, "eval after")
    log(f"held-out accuracy after AGRPO: {acc_after:.3f} ({len(test_items)} items, greedy)")
    if acc_before is not None:
        log(f"held-out accuracy: {acc_before:.3f} -> {acc_after:.3f} ({100 * (acc_after - acc_before):+.1f} points)")
    if master:
        with open(os.path.join(out_dir, "final.json"), "w") as f:
            json.dump({"accuracy_before": acc_before, "accuracy_after": acc_after, "eval_items": len(test_items), "steps": max_steps}, f)
if ddp:
    dist.destroy_process_group()
