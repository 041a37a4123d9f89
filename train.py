"""AGRPO training (ALGORITHM.md): for each step, roll out a group of completions per prompt and
record each one's unmasking trajectory, score them, take group-relative advantages, draw k of each
trajectory's m steps, and take PPO-clip updates on the stepwise estimate of log π(o).

    python train.py                 # the embedded default: models/tiny-countdown (tools/sft.py) on Countdown
    python train.py configs/llada_gsm8k.py --learning_rate=1e-6
    torchrun --nproc_per_node 8 train.py configs/llada_gsm8k.py
    python train.py --help          # every key, its default and meaning
"""

import functools
import os
import random
import sys
import time
from types import SimpleNamespace

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from agrpo import MicroBatch, accumulate_gradients, equal_groups, group_advantages, kept_rows, prepare
from eval import item_accuracies
from likelihood import ESTIMATORS, SCHEMES, completion_mask
from plumbing import data, ddp, lifecycle, logs, optim, train_settings, watch
from plumbing.configurator import configure
from plumbing.errors import config_errors
from plumbing.families import check_blocks, native_departures, unwrap
from plumbing.fsdp import gathered
from plumbing.logits import count_positions
from plumbing.model import load_policy
from plumbing.model_names import shipped
from plumbing.outdir import weights_bytes
from plumbing.stats import mean_se
from sample import UNMASKING, check_settings, decode_completions, generate

# --- config
# model and data
model_name_or_path = "models/tiny-countdown"  # a model folder (models/: shipped), a hub id, or "tiny" (random)
task = "countdown"  # a file of tasks/ (--help lists them, and a generator's options as keys)
train_file = ""  # local JSONL/CSV/Parquet, "hub" (the released run's data), or "" (generated, or the hub)
eval_file = ""  # held-out items: as train_file
system_prompt = ""  # "task" (the task's own), "" (none: the embedded model), a .txt file (its text), or the text
compact_prompt = True  # short question text (the embedded model); False: full sentences
max_prompt_length = 512  # prompt tokens kept, cut from the left (TRL's name and default; 0 = no limit)
# rollout (ALGORITHM.md §1)
max_completion_length = 16  # G: completion tokens per rollout
block_length = 8  # b: semi-autoregressive block length; divides G
sampling_steps = 4  # m: unmasking steps per rollout (threshold: the most), a multiple of G / b
temperature = 0.7  # T: rollout sampling temperature
top_k = 0  # rollout top-k truncation (0 = off)
top_p = 1.0  # rollout nucleus truncation (1 = off)
unmasking = "low_confidence"  # which masked positions a step commits: low_confidence | random | threshold
threshold = 0.9  # τ of --unmasking=threshold: it commits every masked position this confident (at least G/m)
# estimator of log π(o) (§2, §3)
estimator = "stepwise"  # stepwise (AGRPO) | one_step (diffu-GRPO) | elbo
scheme = "low_discrepancy"  # stepwise draws of t: uniform | low_discrepancy | entropy (importance) | exact
mc_samples = 2  # k: draws per completion per update (sampled steps or masks)
draws_per_pass = 0  # block models: the most draws one packed forward scores (0 = all; fewer: less memory)
# objective (§4)
num_generations = 8  # R: completions per prompt (the group: group-relative advantages need two)
scale_rewards = False  # divide advantages by the group's reward sample std (TRL's)
epsilon = 0.2  # ε_low of the clip: ratios below 1 − ε stop pulling down
epsilon_high = 0.2  # ε_high of the clip: ratios above 1 + ε stop pulling up
beta = 0.0  # β: weight of the ρ·k3 KL to the reference policy (0 = no reference pass)
num_iterations = 1  # μ: policy updates per batch of rollouts
# optimisation
learning_rate = 3e-4  # AdamW peak rate: 1% warmup from 0, cosine to 0; a step moves a weight by at most ~2.35x it
max_grad_norm = 1.0  # gradient-norm clip
per_device_train_batch_size = 64  # completions per rank per micro-batch (whole groups); held-out prompts too
gradient_accumulation_steps = 1  # micro-batches per rank per optimizer step
max_steps = 1000  # optimizer steps; 0 or -1: num_train_epochs passes over the training prompts
num_train_epochs = 1.0  # used when max_steps <= 0
lora_r = 0  # LoRA rank (0 = full fine-tuning)
lora_alpha = 64  # LoRA scale α (the update is α/r · BA)
lora_target_modules = ()  # module-name suffixes LoRA adapts (() = the model family's: families.py)
seed = 0  # prompts, rollouts, draws and the generated data all derive from it
# run and I/O
output_dir = "runs/tiny_countdown"  # checkpoints, log.jsonl, completions.jsonl, final.json
eval_items = 200  # held-out problems scored greedily before and after training (-1: all, 0: none)
eval_every = 0  # held-out accuracy every this many steps too, as eval_accuracy (0 = before and after)
log_completions_steps = 0  # every this many steps, the completions to completions.jsonl (0 = never)
save_steps = 50  # write a checkpoint every this many steps (and at the last)
save_total_limit = 2  # checkpoints kept (the newest)
resume_from_checkpoint: bool | str = False  # True: the newest whole checkpoint in output_dir; or a checkpoint-N path
overwrite_output_dir = False  # without resume, empty an output_dir that holds a run (checkpoints, log) first
report_to = "none"  # none | tensorboard | wandb: the log.jsonl rows there too (log.jsonl is always written)
# memory and distributed
gradient_checkpointing = False  # recompute activations in the backward pass (memory for time)
compile = False  # torch.compile each transformer layer
fsdp = False  # FSDP2: weights, gradients and AdamW moments sharded over the ranks (torchrun); full fine-tuning at 8B
collective_timeout_minutes = 30  # a rank waiting this long on the others (a slow checkpoint write) stops the run
# --- end of config

# the values a numeric key may take: "[" includes its end, "(" leaves it out
RANGES = dict(
    max_prompt_length="[0, inf)", max_completion_length="[1, inf)", block_length="[1, inf)",
    sampling_steps="[1, inf)", temperature="[0, 100]", top_k="[0, inf)", top_p="(0, 1]", threshold="(0, 1]",
    mc_samples="[1, inf)", draws_per_pass="[0, inf)", max_steps="[-1, inf)",
    num_generations="[2, inf)", epsilon="(0, 1)", epsilon_high="(0, inf)", beta="[0, inf)", num_iterations="[1, inf)",
    learning_rate="(0, 1]", max_grad_norm="(0, inf)", per_device_train_batch_size="[1, inf)",
    gradient_accumulation_steps="[1, inf)", num_train_epochs="(0, 1e6]", lora_r="[0, inf)", lora_alpha="(0, inf)",
    seed="[0, 2**63)", eval_items="[-1, inf)", eval_every="[0, inf)", log_completions_steps="[0, inf)",
    save_steps="[1, inf)", save_total_limit="[1, inf)", collective_timeout_minutes="(0, inf)",
)  # fmt: skip

# the values a key of a few named choices may take (the code's own lists)
CHOICES = dict(
    task=data.TASK_NAMES, unmasking=UNMASKING, estimator=ESTIMATORS, scheme=tuple(SCHEMES), report_to=logs.REPORTERS
)

MAX_NONFINITE = 20  # this many skipped (non-finite) updates in a row stop the run
# a resume may change these (where and how often it writes, reports, evaluates; memory, speed), no other key
MAY_CHANGE = set(
    "output_dir resume_from_checkpoint overwrite_output_dir save_steps save_total_limit report_to eval_every "
    "log_completions_steps eval_file eval_items gradient_checkpointing compile draws_per_pass "
    "collective_timeout_minutes".split()
)


def validate(cfg, argv=()):
    """Every impossible combination stops here, before any heavy work, with the key and the fix: the sampler's
    settings by the sampler's own check, the rest by plumbing/train_settings.py."""
    with config_errors():
        check_settings(**sampler(cfg))
    train_settings.check(cfg, argv, default_threshold=threshold)


def sampler(cfg):
    """The rollout policy π_θ(· | x_t) of sample.generate: length G, block length b, steps m, how a step samples."""
    shape = dict(max_completion_length=cfg.max_completion_length, block_length=cfg.block_length)
    shape["sampling_steps"] = cfg.sampling_steps
    how = dict(temperature=cfg.temperature, top_k=cfg.top_k or None, top_p=cfg.top_p, threshold=cfg.threshold)
    return dict(**shape, **how, unmasking=cfg.unmasking)


def roll_out(cfg, model, ref_model, tok, items, *, step, micro, device, amp):
    """Rollout, rewards and group advantages, then the draws with their old and reference log-probs."""
    whole = [data.build_prompt(tok, cfg.task, it, cfg.system_prompt, cfg.compact_prompt) for it in items]
    prompts = [data.cut_left(p, cfg.max_prompt_length) for p in whole for _ in range(cfg.num_generations)]
    special = dict(mask_id=tok.mask_token_id, eos_ids=tok.eos_ids, pad_id=tok.pad_token_id)
    generator = ddp.seeded(cfg.seed, "rollout", step, micro, device=device)
    policy = unwrap(model).eval()
    with amp():
        rollout = generate(policy, prompts, **sampler(cfg), **special, generator=generator)
    texts, lengths = decode_completions(tok, rollout)
    t = data.task(cfg.task)
    answers = [t.answer(it) for it in items for _ in range(cfg.num_generations)]
    rewards = torch.tensor([t.reward(text, a) for text, a in zip(texts, answers)])
    accuracy = torch.tensor([float(t.accuracy(text, a)) for text, a in zip(texts, answers)])
    advantages = group_advantages(rewards, cfg.num_generations, cfg.scale_rewards).to(device)
    policy.train()
    generator = ddp.seeded(cfg.seed, "draws", step, micro)
    with amp():
        draws, old, ref = prepare(
            model, rollout, estimator=cfg.estimator, k=cfg.mc_samples, mu=cfg.num_iterations, generator=generator,
            scheme=cfg.scheme, ref_model=ref_model, draws_per_pass=cfg.draws_per_pass,
        )  # fmt: skip
    cut = sum(len(p) > cfg.max_prompt_length > 0 for p in whole) * cfg.num_generations
    rows = kept_rows(advantages, cfg.beta)
    return MicroBatch(rollout, texts, rewards, accuracy, lengths, advantages, rows, draws, old, ref, cut)


def update(model, opt, batches, cfg, amp):
    """μ PPO-clip updates on one batch of rollouts (ALGORITHM.md §4): each inner iteration's gradient over all
    micro-batches, then the norm clip and one AdamW step, skipped when it is not finite. Returns (mean
    loss, summed metrics and weights_finite (1: every weight finite after the steps), last grad norm, updates
    skipped)."""
    loss_sum, metrics, skipped = 0.0, {}, 0
    fill_to_ranks = functools.partial(ddp.passes_to_fill, model)  # ranks take part in each other's collectives
    for it in range(cfg.num_iterations):
        loss, these = accumulate_gradients(
            model, batches, it, epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high, beta=cfg.beta, amp=amp,
            fill_to_ranks=fill_to_ranks,
        )  # fmt: skip
        grad_norm, took = optim.clipped_step(opt, cfg.max_grad_norm)
        loss_sum, skipped = loss_sum + loss / cfg.num_iterations, skipped + (not took)
        metrics = {k: metrics.get(k, 0.0) + v for k, v in these.items()}
    # the only read of the update's numbers, once a step, with whether the weights it leaves are all finite
    params = [p for group in opt.param_groups for p in group["params"]]
    values = logs.read_once({"loss": loss_sum, **metrics, "weights_finite": optim.finite_weights(params)})
    return values.pop("loss"), values, grad_norm, skipped


def load_data(cfg, log):
    """Training and held-out items, and the system turn as its text (a resume compares the text, not a file)."""
    with config_errors():  # a malformed data file (file, line and field named), a generator that cannot deliver
        cfg.system_prompt = data.system_prompt_text(cfg.task, cfg.system_prompt)
        options = data.task_options(cfg.task, vars(cfg))
        sources = (cfg.train_file, cfg.eval_file, cfg.eval_items)
        train_items, test_items, note = data.run_items(cfg.task, *sources, cfg.seed, options)
    log(note)
    # score one completion now: a reward that cannot run (MATH's verifier worker) fails before any heavy work
    data.task(cfg.task).reward("<answer>0</answer>", data.task(cfg.task).answer(train_items[0]))
    return train_items, test_items


def load_models(cfg, run):
    """The policy π_θ (and π_ref when β > 0), from the seed, and the tokenizer."""
    torch.manual_seed(cfg.seed)
    lora = (cfg.lora_r, cfg.lora_alpha, cfg.lora_target_modules)
    memory = dict(gradient_checkpointing=cfg.gradient_checkpointing, compile=cfg.compile, sharded=cfg.fsdp)
    with config_errors():
        model, tok, ref_model, cfg.lora_target_modules = load_policy(
            cfg.model_name_or_path, run.device, lora, beta=cfg.beta, distributed=run.distributed, master=run.master,
            **memory,
        )  # fmt: skip
        check_blocks(model, cfg.block_length)
    for line in native_departures(model, **sampler(cfg)):
        run.log(f"warning: {line}")
    return model, tok, ref_model


def held_out_accuracy(cfg, run, model, tok, items, label):
    """Greedy accuracy of each held-out item, decoded as eval.py decodes this run, in the rollouts' precision."""
    with run.amp(), gathered(model):
        scores = item_accuracies(model, tok, cfg, items, rank=run.rank, world=run.world, label=label)
    mean, se = mean_se(scores)
    run.log(f"held-out accuracy {label}: {mean:.3f} ± {se:.3f} ({len(items)} items, greedy; ± a standard error)")
    return scores


def main():
    cfg = SimpleNamespace(**configure(__file__, option_files=data.option_files(), ranges=RANGES, choices=CHOICES))
    validate(cfg, sys.argv[1:])
    # processes (one per GPU under torchrun), the output folder made this run's, Ctrl-C and SIGTERM caught
    room = weights_bytes(shipped(cfg.model_name_or_path)) if cfg.lora_r == 0 else 0  # a checkpoint's weights at least
    where = (cfg.output_dir, cfg.resume_from_checkpoint, cfg.overwrite_output_dir)
    with lifecycle.training_run(*where, cfg.fsdp, cfg.collective_timeout_minutes, room) as run:
        train_items, test_items = load_data(cfg, run.log)
        run.train_items, run.held_out_items = data.items_digest(train_items), data.items_digest(test_items)
        # a logging service that cannot be reached stops the run before the model loads
        run.reporter = logs.open_reporter(cfg.report_to, cfg.output_dir, vars(cfg)) if run.master else None
        model, tok, ref_model = load_models(cfg, run)
        prompts = (cfg.system_prompt, cfg.compact_prompt, cfg.max_prompt_length)
        run.log(data.long_prompts_note(tok, cfg.task, train_items, *prompts))
        accuracy = functools.partial(held_out_accuracy, cfg, run, model, tok, test_items)
        before = functools.partial(accuracy, "before AGRPO")
        scores_before = run.accuracy_before = lifecycle.accuracy_before(cfg, run, before) if test_items else None

        # optimizer and schedule: AdamW, linear warmup, cosine decay to 0 over the run, as released
        groups_per_micro = cfg.per_device_train_batch_size // cfg.num_generations
        prompts_per_step = groups_per_micro * cfg.gradient_accumulation_steps * run.world
        epochs = (cfg.num_train_epochs, len(train_items), groups_per_micro * run.world, cfg.gradient_accumulation_steps)
        total_steps = cfg.max_steps if cfg.max_steps > 0 else optim.steps_for_epochs(*epochs)
        params = [p for p in model.parameters() if p.requires_grad]
        with config_errors():  # float16 weights
            opt, sched = optim.make_optimizer(cfg.learning_rate, params, total_steps)
        log_path, completions_path = (os.path.join(cfg.output_dir, f) for f in ("log.jsonl", "completions.jsonl"))
        start, counters = lifecycle.resume(cfg, run, model, opt, sched, (log_path, completions_path), MAY_CHANGE)
        nonfinite = {"total": 0, "in_a_row": 0, **counters}
        run.log(lifecycle.disk_footprint(cfg, run, model, start, total_steps))  # stops if one checkpoint cannot fit
        # the model the update runs: DDP's wrapper (its gradient all-reduce) under torchrun; FSDP's shards itself
        run.train_model = DistributedDataParallel(model) if run.distributed and not cfg.fsdp else model
        positions = count_positions(model)  # the compute of each step, logged per completion
        run.stop["now"] = False  # from here a signal stops the run where every rank can: ddp.stoppable
        run.bar = tqdm(range(start, total_steps), "AGRPO", initial=start, total=total_steps, disable=not run.master)
        run.save = functools.partial(lifecycle.save, cfg, run, model, opt, sched, tok, nonfinite)
        run.finished, run.last_saved = (start, torch.get_rng_state(), random.getstate()), start
        signs = watch.new_watch(cfg.epsilon)  # a run that stops learning is told once, with the fix

        for step in run.bar:
            t0, positions[0] = time.time(), 0
            # 1. roll out: whole groups per micro-batch; the prompts' order is the same in any partition over ranks
            batches = []
            # FSDP: the weights gathered once for all of the rollouts' forwards; a stop signal cuts them short
            with gathered(model, ref_model), ddp.stoppable(run.stop):
                for a in range(cfg.gradient_accumulation_steps):
                    micro = a * run.world + run.rank  # the global micro-batch index
                    position = step * prompts_per_step + micro * groups_per_micro
                    items = data.prompt_items(train_items, position, groups_per_micro, cfg.seed)
                    this = dict(step=step, micro=micro, device=run.device, amp=run.amp)
                    batches.append(roll_out(cfg, model, ref_model, tok, items, **this))
            # every rank stops here together, or none: from here the weights change and the ranks run collectives
            ddp.stop_if_signalled(run.stop)

            # 2. update: μ PPO-clip updates on the stepwise (or ablation) estimate of log π(o)
            loss, metrics, grad_norm, skipped = update(run.train_model, opt, batches, cfg, run.amp)
            sched.step()
            nonfinite["total"] += skipped
            nonfinite["in_a_row"] = nonfinite["in_a_row"] + skipped if skipped == cfg.num_iterations else 0
            # a step from a finite, clipped gradient leaves finite weights finite (optim.SAFE_GRAD_NORM): weights
            # broken anyway came from outside it, and the last checkpoint is what a resume continues from
            if not metrics.pop("weights_finite"):
                why = "the weights are not finite after the optimizer step"
                lifecycle.halt(cfg.output_dir, step + 1, why, "Lower --learning_rate.")

            # 3. log: means over every rank's completions
            read = dict(in_text=[completion_mask(b.rollout) for b in batches])  # the tokens a reward reads
            read["equal_groups"] = [equal_groups(b.rewards, cfg.num_generations) for b in batches]  # advantage 0
            row = logs.step_means(cfg, batches, loss, metrics, run.device, positions[0], **read)
            row.update(step=step + 1, grad_norm=grad_norm, lr=sched.get_last_lr()[0], seconds=time.time() - t0)
            row.update(skipped=skipped, nonfinite_total=nonfinite["total"])
            if cfg.eval_every and test_items and (step + 1) % cfg.eval_every == 0 and step + 1 < total_steps:
                scores = accuracy(f"at step {step + 1}")
                row["eval_accuracy"], row["eval_accuracy_se"] = mean_se(scores)
            completions = []
            if cfg.log_completions_steps and (step + 1) % cfg.log_completions_steps == 0:
                completions = ddp.gather(logs.completion_rows(tok, step + 1, batches), run.world)
            if run.master:
                logs.record(log_path, completions_path, run.reporter, row, completions)
                run.bar.set_postfix({k: f"{row[k]:.3g}" for k in logs.SHOWN})
            for line in watch.warnings(signs, row):
                run.log(line)
            if nonfinite["in_a_row"] >= MAX_NONFINITE:
                why = f"{nonfinite['in_a_row']} non-finite updates in a row (all skipped, the weights untouched)"
                lifecycle.halt(cfg.output_dir, step + 1, why, "Lower --learning_rate or check the rewards.")

            # 4. checkpoint
            if (step + 1) % cfg.save_steps == 0 or step + 1 == total_steps:
                run.log(f"step {step + 1}: checkpoint {run.save(step + 1)}")  # FSDP: every rank takes part
                run.last_saved = step + 1
                if run.distributed:
                    dist.barrier()
            run.finished = (step + 1, torch.get_rng_state(), random.getstate())
            ddp.stop_if_signalled(run.stop)

        run.stop["now"] = True  # the last checkpoint is saved (FSDP: still written meanwhile, finished at the end)
        if test_items:
            lifecycle.report_final(cfg, run, scores_before, accuracy("after AGRPO"), total_steps)
        if run.master:
            run.log(f"curves: {lifecycle.draw_curves(cfg.output_dir)}")


if __name__ == "__main__":  # worker processes (math-verify's) import this file without running it
    with ddp.rank_end():  # under torchrun, a stop is said once; a rank whose peer stopped ends quietly
        main()
