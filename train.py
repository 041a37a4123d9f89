"""AGRPO training (ALGORITHM.md): for each step, roll out a group of completions per prompt and
record each one's unmasking trajectory, score them, take group-relative advantages, draw k of each
trajectory's m steps, and take PPO-clip steps on the stepwise estimate of log π(o).

    python train.py                                      # embedded default: tiny model, Countdown
    python train.py configs/llada_gsm8k.py --learning_rate=1e-6
    torchrun --nproc_per_node 8 train.py configs/llada_gsm8k.py
    python train.py --help                               # every key, its default and meaning

The embedded default starts from models/tiny-countdown, the embedded model after supervised
masked-diffusion training on generated solutions (sft.py; the command that made it is in
models/README.md), and prints held-out greedy accuracy before and after AGRPO.
"""

import contextlib
import copy
import hashlib
import json
import math
import os
import random
import signal
import time
from types import SimpleNamespace

import torch
import torch.distributed as dist
from tqdm import tqdm

import checkpoint
import data
import ddp
import logs
from agrpo import MicroBatch, group_advantages, kept_rows, prepare, update
from configurator import ConfigError, configure, first_line
from eval import evaluate
from likelihood import ESTIMATORS, SCHEMES
from model import add_lora, compile_blocks, family_of, load, model_path_error, resolved, set_gradient_checkpointing, unwrap
from sample import check_settings, decode_completions, generate

# --- config
model_name_or_path = "models/tiny-countdown"  # a model folder (models/: shipped), a hub id (GSAI-ML/LLaDA-8B-Instruct), "tiny" (random)
task = "countdown"  # a file of tasks/: gsm8k | math | countdown | sudoku (a generator's options: --help)
train_file = ""  # local JSONL/CSV/Parquet, or "hub" (the released run's data); "" = generated (countdown, sudoku) or the hub
eval_file = ""  # held-out items: as train_file
system_prompt = ""  # system turn: "task" = the task's own (tasks/), "" = none (the embedded model), a .txt file = its text, else this
compact_prompt = True  # short question text (the embedded model); False: full sentences
output_dir = "runs/tiny_countdown"  # checkpoints, log.jsonl, completions.jsonl, final.json
seed = 0  # prompts, rollouts, draws and the generated data all derive from it
max_prompt_length = 512  # prompt tokens kept, cut from the left (TRL's name and default; 0 = no limit)
max_completion_length = 16  # G: completion tokens per rollout
block_length = 8  # semi-autoregressive block size; divides G
sampling_steps = 4  # m: unmasking steps per rollout, a multiple of G / block_length
temperature = 0.7  # rollout sampling temperature
top_k = 0  # rollout top-k truncation (0 = off)
top_p = 1.0  # rollout nucleus truncation (1 = off)
unmasking = "low_confidence"  # which masked positions a step commits: low_confidence | random | threshold
threshold = 0.9  # unmasking = "threshold": commit every masked position of the block this confident (at least one a step)
estimator = "stepwise"  # log π(o) estimator: stepwise (AGRPO) | one_step (diffu-GRPO) | elbo
scheme = "low_discrepancy"  # stepwise draws of t: uniform | low_discrepancy | entropy (importance, low-discrepancy) | exact
mc_samples = 2  # k: forward passes per completion per update (sampled steps or masks)
num_iterations = 1  # μ: policy updates per batch of rollouts
epsilon = 0.2  # ε_low of the clip: ratios below 1 − ε stop pulling down
epsilon_high = 0.2  # ε_high of the clip: ratios above 1 + ε stop pulling up
beta = 0.0  # weight of the k3 KL to the reference policy (0 = no reference pass)
scale_rewards = False  # divide advantages by the group's reward std
num_generations = 8  # completions per prompt (the group)
per_device_train_batch_size = 64  # completions per rank per micro-batch: whole groups
gradient_accumulation_steps = 1  # micro-batches per rank per optimizer step
max_steps = 1000  # optimizer steps; <= 0: num_train_epochs passes over the training prompts
num_train_epochs = 1.0  # used when max_steps <= 0
learning_rate = 3e-4  # AdamW peak rate: linear warmup, then cosine decay to 0
max_grad_norm = 1.0  # gradient-norm clip
lora_r = 0  # LoRA rank (0 = full fine-tuning)
lora_alpha = 64  # LoRA scale α (the update is α/r · BA)
lora_target_modules = ()  # module-name suffixes LoRA adapts (() = the model family's: model.FAMILIES)
gradient_checkpointing = False  # recompute activations in the backward pass (memory for time)
compile = False  # torch.compile each transformer block
eval_items = 200  # held-out problems scored before and after training, greedily at the rollouts' length, blocks and steps
eval_every = 0  # held-out accuracy every this many steps too, logged as eval_accuracy (0 = before and after only)
log_completions_steps = 0  # every this many steps, prompts, completions, rewards, advantages to completions.jsonl (0 = never)
save_steps = 50  # write a checkpoint every this many steps (and at the last)
save_total_limit = 2  # checkpoints kept (the newest)
resume_from_checkpoint: bool | str = False  # True: continue from the newest readable checkpoint in output_dir; or a checkpoint-N folder
overwrite_output_dir = False  # without resume, empty an output_dir that holds a run (checkpoints, log) first
report_to = "none"  # none | tensorboard | wandb: the log.jsonl rows there too (log.jsonl is always written)
# --- end of config

MAX_NONFINITE = 20  # this many skipped (non-finite) updates in a row stop the run
# what a resume may change: where and how often it writes, what it reports and evaluates, memory and
# speed. Every other key defines the run; a resume that changes one is refused, naming it.
MAY_CHANGE_ON_RESUME = {
    "output_dir",
    "resume_from_checkpoint",
    "overwrite_output_dir",
    "save_steps",
    "save_total_limit",
    "report_to",
    "eval_every",
    "log_completions_steps",
    "eval_file",
    "eval_items",
    "gradient_checkpointing",
    "compile",
}


RULES = [  # (key, check, allowed values): every numeric and list knob, checked before any heavy work
    *((k, lambda v: v >= 1, ">= 1") for k in ("num_iterations", "per_device_train_batch_size", "gradient_accumulation_steps",
                                             "save_steps", "save_total_limit")),
    ("learning_rate", lambda v: 0 < v <= 1, "in (0, 1]: AdamW moves each weight by up to ~10x the rate a step"),
    ("temperature", lambda v: 0 <= v <= 100, "in [0, 100]"),
    ("num_train_epochs", lambda v: 0 < v <= 1e6, "in (0, 1e6]"),
    ("seed", lambda v: 0 <= v < 2**63, "in [0, 2**63)"),
    *((k, lambda v: v > 0, "> 0") for k in ("max_grad_norm", "epsilon_high", "lora_alpha")),
    *((k, lambda v: v >= 0, ">= 0") for k in ("beta", "lora_r", "top_k", "eval_every", "log_completions_steps",
                                             "max_prompt_length")),
    ("eval_items", lambda v: v >= -1, ">= -1 (-1: the whole test set, 0: no evaluation)"),
    ("epsilon", lambda v: 0 < v < 1, "in (0, 1)"),
    ("lora_target_modules", lambda v: all(isinstance(m, str) and m for m in v), "a tuple of module names"),
]  # fmt: skip


def validate(cfg):
    """Every impossible combination stops here, before any heavy work, with the key and the fix."""
    try:
        data.check_task_options(cfg.task, vars(cfg))
        check_settings(
            cfg.max_completion_length,
            cfg.block_length,
            cfg.sampling_steps,
            cfg.temperature,
            cfg.unmasking,
            cfg.top_k or None,
            cfg.top_p,
            cfg.threshold,
        )
    except ValueError as e:
        raise ConfigError(str(e)) from None
    choices = dict(estimator=ESTIMATORS, scheme=SCHEMES, report_to=logs.REPORTERS)
    for key, allowed in choices.items():
        if getattr(cfg, key) not in allowed:
            raise ConfigError(f"--{key}={getattr(cfg, key)!r} must be one of {allowed}")
    most = cfg.max_completion_length if cfg.unmasking == "threshold" else cfg.sampling_steps  # a threshold run takes its own m'
    if not 1 <= cfg.mc_samples <= most:
        raise ConfigError(f"--mc_samples={cfg.mc_samples} must be between 1 and {most}, the most steps a rollout takes")
    for key, value in vars(cfg).items():  # inf and nan pass every comparison-free check below, so none may pass here
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"--{key}={value!r} must be a finite number")
    for key, ok, rule in RULES:
        if not ok(getattr(cfg, key)):
            raise ConfigError(f"--{key}={getattr(cfg, key)!r} must be {rule}")
    if cfg.num_generations < 2:
        raise ConfigError(f"--num_generations={cfg.num_generations}: group-relative advantages need at least 2 completions per prompt")
    if cfg.per_device_train_batch_size % cfg.num_generations:
        raise ConfigError(
            f"--per_device_train_batch_size={cfg.per_device_train_batch_size} must be a multiple of --num_generations={cfg.num_generations}"
        )
    if isinstance(cfg.resume_from_checkpoint, str) and not os.path.isfile(os.path.join(cfg.resume_from_checkpoint, "trainer_state.json")):
        raise ConfigError(f"--resume_from_checkpoint={cfg.resume_from_checkpoint} is not a checkpoint folder (no trainer_state.json)")
    for key in ("train_file", "eval_file", "system_prompt"):
        path = getattr(cfg, key)
        if (key != "system_prompt" or path.endswith(".txt")) and path not in ("", "hub") and not os.path.exists(path):
            raise ConfigError(f"--{key}={path} does not exist")
    problem = model_path_error(cfg.model_name_or_path)
    if problem:
        raise ConfigError(f"--model_name_or_path: {problem}")


def seeded(seed, *key, device="cpu"):
    """A generator seeded by (seed, *key): the same on every rank and in every partition of work."""
    digest = hashlib.sha256(repr((seed, *key)).encode()).hexdigest()  # not hash(): salted per process
    return torch.Generator(device=device).manual_seed(int(digest[:15], 16))


def roll_out(cfg, model, ref_model, tok, items, step, micro, device, amp):
    """Rollout, rewards and group advantages, then the draws with their old and reference log-probs."""
    whole = [data.build_prompt(tok, cfg.task, it, cfg.system_prompt, cfg.compact_prompt) for it in items]
    prompts = [data.cut_left(p, cfg.max_prompt_length) for p in whole for _ in range(cfg.num_generations)]
    policy = unwrap(model)
    policy.eval()
    with amp():
        rollout = generate(
            policy, prompts, gen_length=cfg.max_completion_length, block_length=cfg.block_length, steps=cfg.sampling_steps,
            mask_id=tok.mask_token_id, eos_ids=tok.eos_ids, temperature=cfg.temperature, top_k=cfg.top_k or None, top_p=cfg.top_p,
            unmasking=cfg.unmasking, threshold=cfg.threshold, pad_id=tok.pad_token_id,
            generator=seeded(cfg.seed, "rollout", step, micro, device=device),
        )  # fmt: skip
    texts, lengths = decode_completions(tok, rollout)
    t = data.task(cfg.task)
    answers = [t.answer(it) for it in items for _ in range(cfg.num_generations)]
    rewards = torch.tensor([t.reward(text, a) for text, a in zip(texts, answers)])
    accuracy = torch.tensor([float(t.accuracy(text, a)) for text, a in zip(texts, answers)])
    advantages = group_advantages(rewards, cfg.num_generations, cfg.scale_rewards).to(device)
    policy.train()
    with amp():
        draws, old, ref = prepare(model, rollout, cfg.estimator, cfg.mc_samples, cfg.num_iterations, seeded(cfg.seed, "draws", step, micro),
                                  cfg.scheme, ref_model)  # fmt: skip
    cut = sum(len(p) > cfg.max_prompt_length > 0 for p in whole) * cfg.num_generations
    return MicroBatch(rollout, texts, rewards, accuracy, lengths, advantages, kept_rows(advantages, cfg.beta), draws, old, ref, cut)


def load_policy(cfg, device, distributed, master):
    """(π_θ, tokenizer, π_ref or None). Under DDP rank 0 loads first, so a hub model's remote code
    is fetched once, then the other ranks load it."""
    torch.manual_seed(cfg.seed)
    for turn in range(2 if distributed else 1):
        if (turn == 0) == master:
            try:
                model, tok = load(cfg.model_name_or_path, device=device)
            except ValueError as e:  # the model cannot be loaded
                raise ConfigError(f"--model_name_or_path: {e}") from None
        if distributed:
            dist.barrier()
    # the family's LoRA targets by name, so a checkpoint records (and a resume compares) the modules adapted
    cfg.lora_target_modules = tuple(cfg.lora_target_modules or family_of(model).lora_targets)
    if cfg.lora_r > 0:
        try:
            model = add_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_target_modules, under_autocast=device.startswith("cuda"))
        except ValueError as e:  # peft: no module of the model matches the targets
            raise ConfigError(f"--lora_target_modules={cfg.lora_target_modules}: {first_line(e)}") from None
    if cfg.gradient_checkpointing:
        set_gradient_checkpointing(model)
    ref_model = None
    if cfg.beta > 0:  # with LoRA, the model with its adapters disabled is the reference: no copy
        ref_model = model if cfg.lora_r > 0 else copy.deepcopy(unwrap(model)).eval().requires_grad_(False)
    if cfg.compile:
        compile_blocks(model)
    return model, tok, ref_model


def make_optimizer(cfg, params, total_steps):
    """AdamW as the released run configures it: β = (0.9, 0.99), weight decay 0.01, the rate warming up
    linearly over the first 1% of the steps, then decaying to 0 (cosine)."""
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, betas=(0.9, 0.99), weight_decay=0.01)
    warmup = max(1, int(0.01 * total_steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total_steps)))
    )
    return opt, sched


def prompt_items(cfg, train_items, position, n):
    """The n prompts at `position` of the run's stream: epoch after epoch, each a fresh seeded
    permutation of the training items. A position is global, so any partition over ranks and
    accumulation steps sees the same prompts."""
    epoch, first = divmod(position, len(train_items))
    order = torch.cat([torch.randperm(len(train_items), generator=seeded(cfg.seed, "epoch", e)) for e in (epoch, epoch + 1)])
    return [train_items[i] for i in order[first : first + n].tolist()]


def main():
    cfg = SimpleNamespace(**configure(__file__, option_files=data.option_files()))
    validate(cfg)
    stop = checkpoint.catch_stop_signals()  # Ctrl-C and SIGTERM: the last finished step is saved, then one line

    # processes and devices: one per GPU under torchrun, or one CPU process
    distributed, rank, world, device = ddp.init_processes()
    master = rank == 0
    lock = checkpoint.claim(cfg.output_dir, cfg.resume_from_checkpoint, cfg.overwrite_output_dir) if master else None  # noqa: F841
    if distributed:
        dist.barrier()  # the other ranks start once the folder is this run's

    def amp():  # bf16 autocast of every forward and backward on CUDA (the sampler's Gumbel noise stays float64)
        return torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else contextlib.nullcontext()

    def log(*a):
        if master:
            tqdm.write(" ".join(str(x) for x in a))

    # the system turn's text itself, so that a resume compares the text and not the file name
    cfg.system_prompt = data.system_prompt_text(cfg.task, cfg.system_prompt)

    # data: generated tasks draw train and test from disjoint parts of the problem space (data.split_of)
    gen = data.task_options(cfg.task, vars(cfg))
    n_generated = 20_000 if hasattr(data.task(cfg.task), "generate") else None
    try:
        train_items = data.load_items(cfg.task, "train", cfg.train_file or None, n=n_generated, seed=cfg.seed, **gen)
        test_items = data.test_set(cfg.task, cfg.eval_file, cfg.eval_items, cfg.seed, **gen) if cfg.eval_items else []
        loaded, train_items = len(train_items), data.without_test_problems(cfg.task, train_items, test_items)  # a file or hub may overlap
    except ValueError as e:  # a malformed data file (data.DataError names file, line and field), or a generator that cannot deliver
        raise ConfigError(str(e)) from None
    if not train_items:
        raise ConfigError(f"no training items: all {loaded} items of train_file={cfg.train_file!r} are held-out problems "
                          f"(eval_file={cfg.eval_file!r}); train on other problems or set eval_items=0")  # fmt: skip
    if len(train_items) < loaded:
        log(f"left out {loaded - len(train_items)} of {loaded} training items: they are held-out problems too")
    # score one completion now: a reward that cannot run (MATH's verifier worker) fails before any heavy work
    data.task(cfg.task).reward("<answer>0</answer>", data.task(cfg.task).answer(train_items[0]))

    # a logging service that cannot be reached stops the run before the model loads
    reporter = logs.open_reporter(cfg.report_to, cfg.output_dir, vars(cfg)) if master else None

    # the policy π_θ (and π_ref when β > 0)
    model, tok, ref_model = load_policy(cfg, device, distributed, master)
    base = resolved(cfg.model_name_or_path)  # what a checkpoint names as its base

    def held_out_accuracy(label):
        with amp():  # the rollouts' precision (adapters added under_autocast need it)
            res = evaluate(model, tok, cfg.task, test_items, gen_length=cfg.max_completion_length, block_length=cfg.block_length,
                           steps=cfg.sampling_steps, batch_size=cfg.per_device_train_batch_size, system_prompt=cfg.system_prompt,
                           compact=cfg.compact_prompt, max_prompt_length=cfg.max_prompt_length, rank=rank, world=world,
                           desc=label)  # fmt: skip
        acc = sum(r["accuracy"] for r in res) / len(res)
        log(f"held-out accuracy {label}: {acc:.3f} ({len(test_items)} items, greedy)")
        return acc

    if cfg.max_prompt_length and (cfg.train_file or not hasattr(data.task(cfg.task), "generate")):  # generated prompts are short by design
        lengths = [len(data.build_prompt(tok, cfg.task, it, cfg.system_prompt, cfg.compact_prompt)) for it in train_items]
        longest = max(range(len(lengths)), key=lengths.__getitem__)
        if lengths[longest] > cfg.max_prompt_length:
            over = sum(n > cfg.max_prompt_length for n in lengths)
            log(f"{over} of {len(lengths)} training prompts are longer than max_prompt_length={cfg.max_prompt_length} tokens and "
                f"are cut from the left; the longest, training item {longest}, has {lengths[longest]} tokens")  # fmt: skip

    acc_before = held_out_accuracy("before AGRPO") if test_items else None

    # optimizer and schedule: AdamW, linear warmup, cosine decay to 0 over the run
    groups_per_micro = cfg.per_device_train_batch_size // cfg.num_generations
    prompts_per_step = groups_per_micro * cfg.gradient_accumulation_steps * world
    total_steps = cfg.max_steps if cfg.max_steps > 0 else max(1, math.ceil(cfg.num_train_epochs * len(train_items) / prompts_per_step))
    params = [p for p in model.parameters() if p.requires_grad]
    opt, sched = make_optimizer(cfg, params, total_steps)

    log_path, completions_path = os.path.join(cfg.output_dir, "log.jsonl"), os.path.join(cfg.output_dir, "completions.jsonl")
    start, nonfinite = 0, {"total": 0, "in_a_row": 0}
    if cfg.resume_from_checkpoint:
        defining = set(vars(cfg)) - MAY_CHANGE_ON_RESUME
        start, counters = checkpoint.resume(
            cfg.output_dir,
            model,
            opt,
            sched,
            vars(cfg),
            defining,
            log_path,
            master,
            log,
            only=cfg.resume_from_checkpoint if isinstance(cfg.resume_from_checkpoint, str) else None,
        )
        nonfinite.update(counters)
        if master:
            checkpoint.truncate_log(completions_path, start)  # the steps after the checkpoint run again
    train_model = torch.nn.parallel.DistributedDataParallel(model) if distributed else model

    bar = tqdm(range(start, total_steps), desc="AGRPO", initial=start, total=total_steps, disable=not master)
    finished = (start, torch.get_rng_state(), random.getstate())  # the last finished step, as a checkpoint saves it
    try:
        for step in bar:
            t0 = time.time()
            # 1. roll out: whole groups per micro-batch; prompts in epoch-wise random order, the same in any partition over ranks
            batches = []
            for a in range(cfg.gradient_accumulation_steps):
                micro = a * world + rank  # the global micro-batch index
                items = prompt_items(cfg, train_items, step * prompts_per_step + micro * groups_per_micro, groups_per_micro)
                batches.append(roll_out(cfg, model, ref_model, tok, items, step, micro, device, amp))

            stop["defer"] = True  # from here the weights change: a signal waits for the end of the step
            # 2. update: μ PPO-clip steps on the stepwise (or ablation) estimate of log π(o)
            loss, metrics, grad_norm, skipped = update(train_model, params, opt, batches, cfg.num_iterations, cfg.epsilon, cfg.epsilon_high,
                                                       cfg.beta, cfg.max_grad_norm, amp)  # fmt: skip
            sched.step()
            nonfinite["total"] += skipped
            nonfinite["in_a_row"] = nonfinite["in_a_row"] + skipped if skipped == cfg.num_iterations else 0

            # update never takes a step AdamW would make non-finite; weights broken anyway (from outside the
            # optimizer) stop the run here, before this step is logged or saved
            if not all(bool(torch.isfinite(p).all()) for p in params):
                newest = checkpoint.newest(cfg.output_dir) or "none written yet"
                raise SystemExit(f"stopping at step {step + 1}: the weights are not finite after the optimizer step (nothing of it "
                                 f"was saved). Last checkpoint: {newest}. Lower --learning_rate.")  # fmt: skip

            # 3. log: means over every rank's completions
            row = logs.step_means(cfg, batches, loss, metrics, device)
            row.update(step=step + 1, grad_norm=grad_norm, lr=sched.get_last_lr()[0], seconds=time.time() - t0)
            row.update(skipped=skipped, nonfinite_total=nonfinite["total"])
            if cfg.eval_every and test_items and (step + 1) % cfg.eval_every == 0 and step + 1 < total_steps:
                row["eval_accuracy"] = held_out_accuracy(f"at step {step + 1}")
            completions = []
            if cfg.log_completions_steps and (step + 1) % cfg.log_completions_steps == 0:
                completions = ddp.gather(logs.completion_rows(tok, step + 1, batches), world)
            if master:
                logs.append_jsonl(log_path, [row])
                logs.append_jsonl(completions_path, completions)
                logs.report(reporter, row, step + 1, completions)
                bar.set_postfix(
                    {k: f"{row[k]:.3g}" for k in ("reward", "reward_std", "accuracy", "loss", "clip_frac", "entropy", "seconds")}
                )
            if nonfinite["in_a_row"] >= MAX_NONFINITE:
                newest = checkpoint.newest(cfg.output_dir) or "none written yet"
                raise SystemExit(
                    f"stopping at step {step + 1}: {nonfinite['in_a_row']} non-finite updates in a row (all skipped; weights untouched "
                    f"since the last good step). Last checkpoint: {newest}. Lower --learning_rate or check the rewards."
                )

            # 4. checkpoint
            if (step + 1) % cfg.save_steps == 0 or step + 1 == total_steps:
                if master:
                    path = checkpoint.save(cfg.output_dir, step + 1, model, opt, sched, vars(cfg), cfg.save_total_limit, base, nonfinite,
                                           tok)  # fmt: skip
                    log(f"step {step + 1}: checkpoint {path}")
                if distributed:
                    dist.barrier()
            finished = (step + 1, torch.get_rng_state(), random.getstate())
            if stop["signal"] is not None:
                raise checkpoint.Interrupted(stop["signal"])
            stop["defer"] = False

        if test_items:
            acc_after = held_out_accuracy("after AGRPO")
            if acc_before is not None:
                log(f"held-out accuracy: {acc_before:.3f} -> {acc_after:.3f} ({100 * (acc_after - acc_before):+.1f} points)")
            if master:
                with open(os.path.join(cfg.output_dir, "final.json"), "w") as f:
                    json.dump(
                        {"accuracy_before": acc_before, "accuracy_after": acc_after, "eval_items": len(test_items), "steps": total_steps}, f
                    )
    except checkpoint.Interrupted as e:
        stop["defer"] = True  # a second Ctrl-C does not cut the checkpoint short
        done, torch_rng, python_rng = finished
        path = checkpoint.newest(cfg.output_dir)
        if master and done > start and not (path or "").endswith(f"{checkpoint.PREFIX}{done}"):
            torch.set_rng_state(torch_rng)
            random.setstate(python_rng)
            path = checkpoint.save(cfg.output_dir, done, model, opt, sched, vars(cfg), cfg.save_total_limit, base, nonfinite, tok)
        logs.close_reporter(reporter)
        bar.close()
        how = f"checkpoint {path}: continue with --resume_from_checkpoint" if path else "no checkpoint written yet"
        raise SystemExit(f"stopped by {signal.Signals(e.args[0]).name} after step {done}: {how}" if master else 1) from None
    logs.close_reporter(reporter)
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":  # worker processes (math-verify's) import this file without running it
    try:
        main()
    except checkpoint.Interrupted as e:  # before the first step: nothing to save
        raise SystemExit(f"stopped by {signal.Signals(e.args[0]).name} before training began: nothing written") from None
