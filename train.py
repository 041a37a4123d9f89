"""Placeholder until the AGRPO loop lands: samples from the embedded model so the README command runs."""

from model import load
from sample import generate

model, tok = load("tiny")
prompt = tok.apply_chat_template([{"role": "user", "content": "Using the numbers [2, 3, 4], make 14."}], add_generation_prompt=True)
r = generate(model, [prompt], gen_length=32, block_length=8, steps=16, mask_id=tok.mask_token_id, eos_ids=tok.eos_ids)
print(tok.decode(r.completion[0]))
