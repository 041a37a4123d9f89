"""Foundation: the embedded model and tokenizer, the checks on load, gradient checkpointing."""

import os
import subprocess
import sys

import pytest
import torch
from transformers.modeling_outputs import MaskedLMOutput

from data import chat_ids
from model import (
    add_lora,
    check_compatible,
    compile_blocks,
    forward_logits,
    load,
    load_tiny_checkpoint,
    model_path_error,
    save_tiny_checkpoint,
    set_gradient_checkpointing,
    tiny_tokenizer,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tokenizer_roundtrip_and_specials():
    tok = tiny_tokenizer()
    text = "<think>25+3=28\n</think><answer>(25+3)*2</answer>"
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.decode(ids) == text and len(ids) < len(text)  # tags are one token each
    assert tok.mask_token_id is not None and tok.eos_token_id is not None and tok.pad_token_id is not None
    p = chat_ids(tok, [{"role": "user", "content": "hi"}])
    assert tok.decode(p) == "<|user|>hi<|eot|><|assistant|>"


def test_tiny_forward_shapes_and_bidirectional():
    model, tok = load("tiny")
    ids = torch.randint(10, 100, (2, 12))
    logits = model(ids).logits
    assert logits.shape == (2, 12, len(tok))
    ids2 = ids.clone()
    ids2[:, -1] = 42  # a change at the end must reach the first position (no causal mask)
    assert not torch.allclose(model(ids2).logits[:, 0], logits[:, 0])


def test_offline_load_with_network_disabled():
    code = (
        "import socket\n"
        "def no_net(*a, **k): raise RuntimeError('network used')\n"
        "socket.socket.connect = no_net; socket.create_connection = no_net\n"
        "from model import load\n"
        "m, t = load('tiny'); print(t.mask_token_id, t.eos_token_id)\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "2"]


def test_refuses_tokenizer_without_mask():
    model, tok = load("tiny")
    tok.mask_token = None
    with pytest.raises(ValueError, match="mask token"):
        check_compatible(model, tok)


def test_refuses_vocab_mismatch():
    with pytest.raises(ValueError, match="logits vocabulary"):
        load("tiny", tiny_overrides=dict(vocab_size=64))  # smaller than the tokenizer


def test_missing_path_is_clear():
    with pytest.raises(ValueError, match="does not exist"):
        load("./no/such/model")
    with pytest.raises(ValueError, match="does not exist"):
        load("tests/no_such_model")  # one slash, but tests/ is a local folder: not a hub id
    assert model_path_error("GSAI-ML/LLaDA-8B-Instruct") is None and model_path_error("tiny") is None


def test_gradient_checkpointing_same_grads():
    a, _ = load("tiny", seed=3)
    b, _ = load("tiny", seed=3, gradient_checkpointing=True)
    ids = torch.randint(10, 100, (2, 16))
    for m in (a, b):
        m(ids).logits.logsumexp(-1).mean().backward()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad)


def test_checkpoint_roundtrip(tmp_path):
    model, _ = load("tiny", seed=5)
    save_tiny_checkpoint(model, tmp_path / "ck")
    loaded, tok = load(str(tmp_path / "ck"))
    ids = torch.randint(10, 100, (1, 8))
    torch.testing.assert_close(model(ids).logits, loaded(ids).logits)
    (tmp_path / "ck" / "tiny_config.json").write_text('{"d_model": 64, "bogus": 1}')
    with pytest.raises(ValueError, match="bogus"):
        load_tiny_checkpoint(tmp_path / "ck")


class LLaDAShaped(torch.nn.Module):
    """LLaDA's module layout where it matters here: model.transformer = ModuleDict(wte, blocks, ln_f,
    ff_out) and a forward that ends `logits = ff_out(ln_f(x))`, returning an object with .logits."""

    def __init__(self, tiny_model):
        super().__init__()
        t = tiny_model
        self.model = torch.nn.Module()
        self.model.transformer = torch.nn.ModuleDict(dict(wte=t.wte, blocks=t.blocks, ln_f=t.norm, ff_out=t.lm_head))

    def forward(self, ids):
        tr = self.model.transformer
        x = tr["wte"](ids)
        for block in tr["blocks"]:
            x = block(x, None)
        return MaskedLMOutput(logits=tr["ff_out"](tr["ln_f"](x)))


class Opaque(torch.nn.Module):
    """A model whose head cannot be found: forward_logits must project everything, then select."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, ids):
        return self.inner(ids)


@pytest.mark.parametrize("kind", ["tiny", "tiny+lora", "llada_shaped", "opaque"])
def test_logits_at_positions_equal_full_logits(kind):
    """forward_logits(at=...) projects only the selected positions: the values and the gradients
    must equal those of the full logits indexed afterwards, for each way a model is reached."""
    model, _ = load("tiny", seed=0)
    if kind == "tiny+lora":
        model = add_lora(model, 4, 8)
    elif kind == "llada_shaped":
        model = LLaDAShaped(model)
    elif kind == "opaque":
        model = Opaque(model)
    ids = torch.randint(10, 100, (3, 12), generator=torch.Generator().manual_seed(1))
    at = torch.rand(3, 12, generator=torch.Generator().manual_seed(2)) < 0.3
    full = forward_logits(model, ids)
    torch.testing.assert_close(forward_logits(model, ids, at=at), full[at], atol=1e-5, rtol=1e-5)
    block = (slice(None), slice(4, 8))
    torch.testing.assert_close(forward_logits(model, ids, at=block), full[block], atol=1e-5, rtol=1e-5)
    assert forward_logits(model, ids, at=torch.zeros_like(at)).shape == (0, full.shape[-1])

    params = [p for p in model.parameters() if p.requires_grad]
    grads = []
    for logits in (lambda: forward_logits(model, ids)[at], lambda: forward_logits(model, ids, at=at)):
        weights = torch.arange(int(at.sum()) * full.shape[-1], dtype=torch.float32).view(-1, full.shape[-1]).sin()
        grads.append(torch.autograd.grad((logits() * weights).sum(), params))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def seeded_lora(model, under_autocast=False):
    """add_lora(r=4) with seeded adapters and a nonzero B (peft starts B at zero), so they matter."""
    torch.manual_seed(0)  # peft draws lora_A from the global generator
    model = add_lora(model, 4, 8, under_autocast=under_autocast)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02, generator=torch.Generator().manual_seed(len(name)))
    return model


def test_lora_without_input_cast_is_identical_under_autocast():
    """add_lora(under_autocast=True) skips peft's float32 copy of each adapter input. Under bf16
    autocast the matmuls see bf16 either way, so outputs and adapter gradients must be bitwise equal;
    and the adapters stay float32 (Adam's precision)."""
    ids = torch.randint(10, 100, (2, 10), generator=torch.Generator().manual_seed(0))
    results = []
    for under_autocast in (False, True):
        model = seeded_lora(load("tiny", seed=0, dtype=torch.bfloat16)[0], under_autocast=under_autocast)
        assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
        seen = set()  # the dtype each adapter receives: float32 is peft's copy, bf16 means it was skipped
        for name, module in model.named_modules():
            if name.endswith("lora_A.default"):
                module.register_forward_hook(lambda mod, inputs, out, seen=seen: seen.add(inputs[0].dtype))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = forward_logits(model, ids)
            loss = logits.float().logsumexp(-1).mean()
        assert seen == {torch.bfloat16 if under_autocast else torch.float32}
        grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])
        results.append((logits, grads))
    (a, ga), (b, gb) = results
    assert torch.equal(a, b)
    assert all(torch.equal(x, y) for x, y in zip(ga, gb))
    assert any(bool(g.abs().sum() > 0) for g in gb)


def test_compile_blocks_matches_eager():
    """torch.compile of the blocks (train.py --compile) changes no result beyond float rounding: the
    same logits and LoRA gradients under checkpointing, the same greedy tokens from the sampler,
    the same checkpoint keys; a model whose blocks it cannot find is refused with its name."""
    from sample import generate

    def lora_model():
        model, tok = load("tiny", seed=0)
        model = seeded_lora(model)
        set_gradient_checkpointing(model)
        return model.train(), tok

    ids = torch.randint(10, 100, (6, 20), generator=torch.Generator().manual_seed(1))
    at = torch.rand(6, 20, generator=torch.Generator().manual_seed(2)) < 0.3
    results = []
    for compiled in (False, True):
        model, tok = lora_model()
        keys = list(model.state_dict())
        if compiled:
            compile_blocks(model)
            assert list(model.state_dict()) == keys
        logits = forward_logits(model, ids, at=at)
        grads = torch.autograd.grad(logits.log_softmax(-1)[:, 20:40].sum(), [p for p in model.parameters() if p.requires_grad])
        model.eval()
        tokens = generate(model, [[6, 30, 12, 31, 7], [6, 33, 7]], gen_length=8, block_length=4, steps=4, mask_id=tok.mask_token_id)
        results.append((logits, grads, tokens.ids))
    (a, ga, ta), (b, gb, tb) = results
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    for x, y in zip(ga, gb):
        torch.testing.assert_close(y, x, atol=1e-5, rtol=1e-4)
    assert torch.equal(ta, tb)
    with pytest.raises(ValueError, match="Opaque"):
        compile_blocks(Opaque(load("tiny")[0]))
