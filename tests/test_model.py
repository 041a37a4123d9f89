"""Foundation: the embedded model and tokenizer, the checks on load, gradient checkpointing."""

import os
import subprocess
import sys

import pytest
import torch

from model import check_compatible, load, load_tiny_checkpoint, model_path_error, save_tiny_checkpoint, tiny_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tokenizer_roundtrip_and_specials():
    tok = tiny_tokenizer()
    text = "<think>25+3=28\n</think><answer>(25+3)*2</answer>"
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.decode(ids) == text and len(ids) < len(text)  # tags are one token each
    assert tok.mask_token_id is not None and tok.eos_token_id is not None and tok.pad_token_id is not None
    p = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
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
