"""Evaluation: greedy decoding (low-confidence or random unmasking, or threshold decoding) on a task's test
set, over a grid of generation lengths G and sampling-step counts m (the paper's compute/accuracy trade-off).

    python eval.py                                        # the embedded default, before and after AGRPO
    python eval.py configs/llada_gsm8k.py configs/llada_eval.py --models="('runs/llada_gsm8k',)"
    python eval.py --models="('runs/llada_gsm8k',)" --max_completion_length="(128,256,512)"
    python eval.py --help                                 # every key, its default and meaning
    torchrun --nproc_per_node 8 eval.py ...               # batches sharded over ranks, gathered on rank 0

A model evaluates as its run was trained: when --models holds a run or checkpoint folder, the task,
its system turn and prompt form, the test set and the decoding (the one train.py scores held-out accuracy
with, eval_settings.held_out_decoding: the rollouts' length, blocks and steps, by their threshold when they
decode by one) come from the run's recorded config; a training preset
(configs/*.py) supplies them the same way. A preset of eval.py's own keys (configs/llada_eval.py: the
released evaluation's decoding) and keys on the command line override both. The table's header says
which settings were used and where each came from.

Accuracy is the mean of per-item scores a_i (exact correctness; Sudoku: cell accuracy), with
standard error s/√n, s² = Σ(a_i − ā)²/(n − 1); a later model's change against the first is the mean of
d_i = a_i − a_i(first) on the same items, its error that of the d_i. Writes to output_dir: samples.jsonl
(one record per item, model, G and m), results.md (the table), results.json and accuracy_vs_steps.png;
Ctrl-C writes them for the cells already decoded, marked partial. A length whose decode cannot fit in
memory is refused before it is allocated.
`evaluate` is also what train.py calls before and after training.
"""

import json
import os
import sys
import time

import torch
from tqdm import tqdm

from plumbing import data, ddp, logs, outdir, restore
from plumbing.errors import ConfigError, config_errors
from plumbing.eval_settings import eval_settings, held_out_decoding, row_decoding
from plumbing.families import check_blocks, native_departures, unwrap
from plumbing.logits import computes_in_float32
from plumbing.model import load
from plumbing.stats import mean_se, paired_change
from rewards import extract_answer
from sample import UNMASKING, check_settings, decode_completions, generate

# --- config
models = ("models/tiny-countdown", "runs/tiny_countdown")  # run folders, checkpoint-N folders, model folders, hub ids
labels = ("base", "AGRPO")  # one name per model; () = the paths (the default when --models is given alone)
task = "countdown"  # a file of tasks/ (--help lists them, and a generator's options as keys)
eval_file = ""  # local test file, "hub" (the released run's), or "" (generated: train.py's for this seed; or the hub)
eval_items = 200  # test problems scored (-1: the whole test set of a file or the hub)
eval_split = "test"  # test | validation (generated tasks: problems kept apart for tuning; Sudoku: 21 of 288 grids)
seed = 0  # generated test set: the one train.py with this seed evaluates on
system_prompt = ""  # system turn as trained with: "task" (the task's own), "" (none), a .txt file, or the text
compact_prompt = True  # short question text (the embedded model); False: full sentences
max_prompt_length = 512  # prompt tokens kept, cut from the left as in training (0 = no limit)
max_completion_length = (16, 32)  # completion lengths G of the grid
block_length = 8  # b: semi-autoregressive block length (32 for LLaDA)
step_fractions = (0.25, 0.5, 1.0)  # sampling steps m = fraction · G at each G
sampling_steps = ()  # explicit step counts used at every G instead of step_fractions
unmasking = "low_confidence"  # low_confidence | random (the fixed-step rows) | threshold (each τ at each m instead)
thresholds = ()  # threshold decoding: a row per τ at each G, at most m = G steps (its steps column: mean passes)
per_device_eval_batch_size = 100  # prompts per forward pass
base_model = ""  # the checkpoints' base model ("" = the one each names; a named folder's own code never runs)
merge_lora = True  # fold LoRA adapters into the weights, in float32 (faster decoding); False decodes through peft
output_dir = "runs/tiny_countdown/eval"  # results.md, results.json, samples.jsonl, accuracy_vs_steps.png
# --- end of config

CHOICES = dict(task=data.TASK_NAMES, eval_split=data.SPLITS, unmasking=UNMASKING)  # the code's own lists
RANGES = dict(
    eval_items="[-1, inf)",
    seed="[0, 2**63)",
    max_prompt_length="[0, inf)",
    block_length="[1, inf)",
    per_device_eval_batch_size="[1, inf)",
)


def prompt_batches(lengths, batch_size, in_float32=True):
    """Batches of item indices, fixed before they are dealt to ranks. In float32 consecutive items; in bf16
    items of one prompt length (no padding), since there a padded row's rounding depends on its batch-mates
    (a block model's mask and canvas): a row decodes as it would alone, in every dtype."""
    if in_float32:
        return [list(range(s, min(s + batch_size, len(lengths)))) for s in range(0, len(lengths), batch_size)]
    by_length = {}
    for i, n in enumerate(lengths):
        by_length.setdefault(n, []).append(i)
    return [same[s : s + batch_size] for same in by_length.values() for s in range(0, len(same), batch_size)]


@torch.no_grad()
def evaluate(
    model,
    tok,
    task,
    items,
    *,
    max_completion_length,
    block_length,
    sampling_steps,
    batch_size=32,
    system_prompt="",
    compact=False,
    max_prompt_length=0,
    unmasking="low_confidence",
    threshold=None,
    rank=0,
    world=1,
    desc="eval",
):
    """Per-item records (prompt, completion, extracted answer, reward, accuracy, correct, length,
    forward passes), in item order. Batches are fixed first and dealt to ranks (batch b to rank
    b mod world), so each item is decoded in the same batch whatever the world size: sharded
    results equal one process's exactly. Under torch.distributed every rank returns all records."""
    fns = data.task(task)
    policy = unwrap(model)
    was_training = policy.training
    policy.eval()
    prompts = [data.build_prompt(tok, task, it, system_prompt, compact, max_prompt_length) for it in items]
    in_float32 = computes_in_float32(policy, next(policy.parameters()).device)
    batches = prompt_batches([len(p) for p in prompts], batch_size, in_float32)
    out = []
    for idx in tqdm(batches[rank::world], desc=desc, disable=rank != 0, leave=False):
        r = generate(
            policy,
            [prompts[i] for i in idx],
            max_completion_length=max_completion_length,
            block_length=block_length,
            sampling_steps=sampling_steps,
            mask_id=tok.mask_token_id,
            eos_ids=tok.eos_ids,
            unmasking=unmasking,
            threshold=threshold,
            pad_id=tok.pad_token_id,
        )
        texts, lengths = decode_completions(tok, r)
        for i, t, n, passes in zip(idx, texts, lengths.tolist(), r.passes.tolist()):
            answer = fns.answer(items[i])
            accuracy = float(fns.accuracy(t, answer))
            out.append(
                {
                    "index": i,
                    "prompt": tok.decode(prompts[i], skip_special_tokens=False),
                    "completion": t,
                    "answer": extract_answer(t),
                    "reward": fns.reward(t, answer),
                    "accuracy": accuracy,
                    "correct": accuracy == 1.0,
                    "length": n,
                    "passes": passes,  # forward passes this item's decoding took
                }
            )
    policy.train(was_training)
    return sorted(ddp.gather(out, world), key=lambda rec: rec["index"])


def item_accuracies(model, tok, cfg, items, *, rank=0, world=1, label="eval"):
    """The held-out accuracy of each item, as train.py scores it for its config `cfg`: decoded as eval.py decodes
    the run (held_out_decoding), the run's prompts, per_device_train_batch_size prompts a batch."""
    form = dict(system_prompt=cfg.system_prompt, compact=cfg.compact_prompt, max_prompt_length=cfg.max_prompt_length)
    batches = dict(batch_size=cfg.per_device_train_batch_size, rank=rank, world=world, desc=label)
    records = evaluate(model, tok, cfg.task, items, **held_out_decoding(vars(cfg)), **form, **batches)
    return [r["accuracy"] for r in records]


def summarize(records):
    accuracy, se = mean_se([r["accuracy"] for r in records])
    return dict(accuracy=accuracy, se=se, mean_length=sum(r["length"] for r in records) / len(records))


def decode_bytes(model, rows, positions):
    """A lower bound on the memory decoding `rows` sequences of `positions` positions holds at once: the
    canvas and its per-position records (token, attention, step: int64; log-prob, entropy: float32) and two
    float32 hidden states of the model's width (a layer's input and its output) over every position."""
    bare = unwrap(model)
    try:
        width = bare.get_input_embeddings().weight.shape[1]
    except (AttributeError, NotImplementedError):  # a model's own code without the accessor
        width = getattr(bare.config, "hidden_size", None) or getattr(bare.config, "d_model", 0)
    return rows * positions * (3 * 8 + 2 * 4 + 2 * 4 * width)


def free_bytes(device):
    """The memory a decode may still take on `device` (None where it cannot be read)."""
    if torch.device(device).type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return None


def check_room(model, name, device, rows, lengths):
    """Refuse, before any decode allocates, a completion length whose decode cannot fit in memory."""
    free = free_bytes(device)
    for G in sorted(lengths, reverse=True):
        need = decode_bytes(model, rows, G)
        if free is not None and need > free:
            raise ConfigError(
                f"{name}: --max_completion_length={G} needs at least {need / 2**30:.1f} GiB to decode {rows} rows "
                f"({free / 2**30:.1f} GiB free): lower it or --per_device_eval_batch_size"
            )


def write_results(cfg, rows, samples, names, items, sources, *, partial=""):
    """results.md, results.json, samples.jsonl and the plot of the cells decoded, each written beside the one it
    replaces and renamed into place once all are written; `partial` says why some are missing (the files say so)."""
    table = logs.results_table(rows, names[0] if len(names) > 1 else None)
    decoding = f"greedy, {cfg['unmasking']} unmasking, block {cfg['block_length']}"
    header = f"{cfg['task']}, {len(items)} {cfg['eval_split']} items, {decoding}\n\n"
    header += f"Settings {sources}.\n\n"
    if partial:
        header += f"Partial: {partial}.\n\n"
    if len(names) > 1:
        header += f"vs {names[0]}: the change in points on the same items, ± its paired standard error.\n\n"
    title = f"{cfg['task']}: {len(items)} {cfg['eval_split']} items, greedy"

    def write(folder):
        with open(os.path.join(folder, "samples.jsonl"), "w") as f:
            f.writelines(json.dumps(s) + "\n" for s in samples)
        with open(os.path.join(folder, "results.md"), "w") as f:
            f.write(header + table + "\n")
        with open(os.path.join(folder, "results.json"), "w") as f:
            json.dump({"config": cfg, "rows": rows, **({"partial": partial} if partial else {})}, f, indent=1)
        logs.plot_results(rows, os.path.join(folder, "accuracy_vs_steps.png"), title)

    outdir.write_files(cfg["output_dir"], write)
    return header + table


def main():
    cfg, specs, grid, system, sources = eval_settings(
        __file__, sys.argv[1:], RANGES, CHOICES, check_decoding=check_settings
    )
    names = list(cfg["labels"]) or list(cfg["models"])

    with ddp.processes() as (distributed, rank, world, device, _):  # Ctrl-C and SIGTERM raise ddp.Interrupted
        with config_errors():  # a malformed data file (file, line and field named), a generator that cannot deliver
            gen = data.task_options(cfg["task"], cfg)
            where = (cfg["eval_file"], cfg["eval_items"], cfg["seed"], cfg["eval_split"])
            items = data.test_set(cfg["task"], *where, **gen)

        rows, samples, baseline = [], [], {}  # baseline: the first model's per-item scores in each cell of the grid
        try:
            grid_cells(
                cfg, names, specs, grid, items, system=system, rows=rows, samples=samples, baseline=baseline,
                rank=rank, world=world, device=device,
            )  # fmt: skip
        except ddp.Interrupted as e:  # the cells already decoded are written, and the stop said in one line
            if rank == 0 and rows:
                partial = f"interrupted after {len(rows)} of {len(names) * len(grid)} cells"
                write_results(cfg, rows, samples, names, items, sources, partial=partial)
                print(
                    f"eval.py: {partial}; wrote them to {cfg['output_dir']} (results.md, results.json, samples.jsonl)",
                    file=sys.stderr,
                )
            elif rank == 0:
                print("eval.py: interrupted before the first cell was decoded; nothing written", file=sys.stderr)
            sys.exit(128 + e.args[0])  # the shell's status for a process a signal ended (Ctrl-C: 130)
        if rank == 0:
            print(write_results(cfg, rows, samples, names, items, sources))
            print(f"wrote {cfg['output_dir']}/results.md, results.json, samples.jsonl, accuracy_vs_steps.png")


def grid_cells(cfg, names, specs, grid, items, *, system, rows, samples, baseline, rank, world, device):
    """Each model over the grid: appends each cell's row and samples as soon as it is decoded."""
    for name, (kind, spec) in zip(names, specs):
        if kind == "checkpoint":
            model, tok, _ = restore.load_trained(
                spec, device=device, merge_lora=cfg["merge_lora"], base=cfg["base_model"] or None
            )
        else:
            try:
                model, tok = load(spec, device=device)
            except ValueError as e:  # offline hub id, damaged weights or tokenizer, a folder transformers refuses
                raise ConfigError(f"--models: {e}") from None
        try:
            check_blocks(model, cfg["block_length"])
        except ValueError as e:
            raise ConfigError(f"{name}: --{e}") from None
        rows_at_once = min(cfg["per_device_eval_batch_size"], len(items))
        check_room(model, name, device, rows_at_once, {G for G, _, _ in grid})
        prompting = (system, cfg["compact_prompt"], cfg["max_prompt_length"], "test")
        if rank == 0 and (note := data.long_prompts_note(tok, cfg["task"], items, *prompting)):
            print(f"note: {name}: {note}", file=sys.stderr)
        for unmasking in dict.fromkeys(row_decoding(cfg, *row)["unmasking"] for row in grid):
            for line in native_departures(model, unmasking) if rank == 0 else ():
                print(f"warning: {name}: {line}")
        for G, m, tau in grid:
            t0 = time.time()
            how = f"m={m}" if tau is None else f"τ={tau}"
            records = evaluate(
                model,
                tok,
                cfg["task"],
                items,
                **row_decoding(cfg, G, m, tau),
                batch_size=cfg["per_device_eval_batch_size"],
                system_prompt=system,
                compact=cfg["compact_prompt"],
                max_prompt_length=cfg["max_prompt_length"],
                rank=rank,
                world=world,
                desc=f"{name} G={G} {how}",
            )
            steps = m if tau is None else sum(r["passes"] for r in records) / len(records)
            rows.append(
                dict(
                    model=name,
                    task=cfg["task"],
                    max_completion_length=G,
                    sampling_steps=steps,
                    threshold=tau,
                    seconds=time.time() - t0,
                    **summarize(records),
                )
            )
            samples += [
                dict(model=name, max_completion_length=G, sampling_steps=m, threshold=tau, **r) for r in records
            ]
            scores = [r["accuracy"] for r in records]
            if name == names[0]:
                baseline[G, m, tau] = scores
            else:  # the same items as the first model: the change is paired
                before, after, se = paired_change(baseline[G, m, tau], scores)
                rows[-1].update(change=after - before, change_se=se)
            if rank == 0:
                acc, se = 100 * rows[-1]["accuracy"], 100 * rows[-1]["se"]
                tqdm.write(f"{name}: G={G} {how} accuracy {acc:.1f} ± {se:.1f} ({steps:.3g} steps)")
        del model


if __name__ == "__main__":
    with ddp.rank_end():  # under torchrun, a stop is said once; a rank whose peer stopped ends quietly
        main()
