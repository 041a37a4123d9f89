"""Evaluation: greedy decoding (low-confidence remasking) on a task's test set, accuracy per item.

`evaluate` is the function train.py also calls; the script part (below) runs it over a grid of
generation lengths and sampling-step counts.
"""

import torch
import torch.distributed as dist
from tqdm import tqdm

import data
from model import unwrap
from rewards import extract_answer
from sample import generate


def decode_completions(tok, rollout):
    """Texts up to the first EOS (what a reward sees) and their lengths in tokens."""
    texts, lengths = [], []
    for row, row_eos in zip(rollout.completion, rollout.is_eos):
        hits = row_eos.nonzero()
        n = int(hits[0]) if len(hits) else len(row)
        texts.append(tok.decode(row[:n].tolist(), skip_special_tokens=True))
        lengths.append(n)
    return texts, torch.tensor(lengths)


@torch.no_grad()
def evaluate(model, tok, task, items, *, gen_length, block_length, steps, batch_size=32, system_prompt=data.SYSTEM_PROMPT,
             compact=False, remasking="low_confidence", rank=0, world=1, desc="eval"):  # fmt: skip
    """Per-item records (prompt, completion, extracted answer, reward, accuracy), in item order.
    Each rank decodes its shard (items rank, rank + world, ...); under torch.distributed the
    shards are gathered so every rank returns all records. Greedy, so a shard is deterministic."""
    fns = data.task(task)
    m = unwrap(model)
    was_training = m.training
    m.eval()
    shard = list(range(rank, len(items), world))
    out = []
    for s in tqdm(range(0, len(shard), batch_size), desc=desc, disable=rank != 0, leave=False):
        idx = shard[s : s + batch_size]
        prompts = [data.build_prompt(tok, task, items[i], system_prompt, compact) for i in idx]
        r = generate(m, prompts, gen_length=gen_length, block_length=block_length, steps=steps, mask_id=tok.mask_token_id,
                     eos_ids=tok.eos_ids, remasking=remasking, pad_id=tok.pad_token_id)  # fmt: skip
        texts, lengths = decode_completions(tok, r)
        for i, p, t, n in zip(idx, prompts, texts, lengths.tolist()):
            answer = data.answer_of(task, items[i])
            out.append(
                {
                    "index": i,
                    "prompt": tok.decode(p, skip_special_tokens=False),
                    "completion": t,
                    "answer": extract_answer(t),
                    "reward": fns["reward"](t, answer),
                    "accuracy": float(fns["accuracy"](t, answer)),
                    "length": n,
                }
            )
    m.train(was_training)
    if world > 1 and dist.is_initialized():
        shards = [None] * world
        dist.all_gather_object(shards, out)
        out = [rec for shard_out in shards for rec in shard_out]
    return sorted(out, key=lambda rec: rec["index"])
