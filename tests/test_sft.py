"""The warm start (sft.py): batch layout and that its loss goes down."""

import random

import torch

import data
import sft
from likelihood import elbo_draws
from model import load


def test_sft_batch_layout():
    _, tok = load("tiny")
    items = data.load_items("countdown", "train", None, n=3, seed=0)
    batch = sft.sft_batch(tok, "countdown", items, gen_length=16)
    P = batch.prompt_length
    for i, it in enumerate(items):
        prompt = data.build_prompt(tok, "countdown", it, "", True)
        assert batch.ids[i, P - len(prompt) : P].tolist() == prompt and batch.attention_mask[i, : P - len(prompt)].sum() == 0
        solution = tok(data.task("countdown").solution(it), add_special_tokens=False).input_ids
        assert batch.ids[i, P : P + len(solution)].tolist() == solution
        assert (batch.ids[i, P + len(solution) :] == tok.eos_token_id).all()  # EOS, then EOS padding


def test_sft_lowers_its_loss():
    model, tok = load("tiny", seed=0)
    items = data.load_items("countdown", "train", None, n=64, seed=0)
    held = sft.sft_batch(tok, "countdown", items[:16], gen_length=16)
    draws = elbo_draws(held, 4, torch.Generator().manual_seed(0))

    def loss():
        with torch.no_grad():
            return sft.sft_loss(model, held, draws).item()

    before = loss()
    sft.train(model, tok, "countdown", items, steps=60, lr=2e-3, batch_size=16, gen_length=16, rng=random.Random(0),
              generator_for_step=lambda s: torch.Generator().manual_seed(s), show=False)  # fmt: skip
    assert loss() < 0.7 * before
    assert all(p.grad is None for p in model.parameters())  # nothing left to leak into AGRPO's first step
