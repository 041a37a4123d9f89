"""Foundation: the embedded model and tokenizer, the checks on load, gradient checkpointing."""

import copy
import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch

from plumbing.data import chat_ids
from plumbing.families import family_of
from plumbing.logits import forward_logits, probe_padding_mask
from plumbing.model import (
    add_lora,
    check_compatible,
    compile_layers,
    load,
    model_path_error,
    save,
    set_gradient_checkpointing,
)
from plumbing.tiny_llada import build_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tokenizer_roundtrip_and_specials():
    tok = build_tokenizer()
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
        "from plumbing.model import load\n"
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


def test_incomplete_model_folder_is_one_line(tmp_path):
    """A model folder without its tokenizer (LLaDA's modeling files copied alone once ended in a raw
    KeyError: 'LLaDAConfig'), config or weights: one line naming what is missing."""
    model, tok = load("tiny")
    for lose, says in [
        ("tokenizer", "no tokenizer files"),
        ("config.json", "no config.json"),
        ("model.safetensors", "no weights"),
    ]:
        folder = tmp_path / lose
        save(model, tok, str(folder))
        for f in os.listdir(folder):
            if f.startswith(lose) or (lose == "tokenizer" and f in ("special_tokens_map.json", "chat_template.jinja")):
                os.remove(folder / f)
        with pytest.raises(ValueError, match=says) as e:
            load(str(folder))
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="is a file"):
        load(str(tmp_path / "tokenizer" / "config.json"))


def test_gradient_checkpointing_same_grads():
    a, _ = load("tiny", seed=3)
    b, _ = load("tiny", seed=3)
    set_gradient_checkpointing(b)
    ids = torch.randint(10, 100, (2, 16))
    for m in (a, b):
        m.train()(ids).logits.logsumexp(-1).mean().backward()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad)


def test_saved_folder_loads_without_the_project(tmp_path):
    """A saved model folder carries its modeling file and auto_map, as LLaDA's hub repository does:
    a fresh process that never imported this project (not on its path, run elsewhere) loads it with
    AutoModel/AutoTokenizer and gets the same logits and tokens; `load` of the folder too."""
    model, tok = load("tiny", seed=5)
    save(model, tok, str(tmp_path / "ck"))
    ids = torch.randint(10, 100, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(ids).logits
    torch.save({"ids": ids, "logits": expected}, tmp_path / "expected.pt")
    code = (
        "import sys, torch\n"
        "from transformers import AutoModel, AutoTokenizer\n"
        f"m = AutoModel.from_pretrained({str(tmp_path / 'ck')!r}, trust_remote_code=True)\n"
        f"t = AutoTokenizer.from_pretrained({str(tmp_path / 'ck')!r})\n"
        f"e = torch.load({str(tmp_path / 'expected.pt')!r})\n"
        "with torch.no_grad(): out = m(e['ids']).logits\n"
        "assert not any(n in sys.modules for n in ('model', 'tiny_llada', 'data')), 'project imported'\n"
        "print(float((out - e['logits']).abs().max()), t.mask_token_id, "
        "t.decode(t('<answer>1+2</answer>').input_ids))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    diff, mask_id, text = out.stdout.split()
    assert float(diff) == 0.0 and int(mask_id) == tok.mask_token_id and text == "<answer>1+2</answer>"
    loaded, tok2 = load(str(tmp_path / "ck"))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, expected, atol=0, rtol=0)
    assert tok2.eos_ids == tok.eos_ids and tok2.mask_token_id == tok.mask_token_id and loaded.honours_padding_mask


class IgnoresMask(torch.nn.Module):
    """A stand-in for LLaDA copies that take `attention_mask` and ignore it (padding is attended):
    the same family and layout as the model it wraps."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config, self.model = inner, inner.config, inner.model

    def forward(self, ids, attention_mask=None):
        return self.inner(ids)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_padding_mask_probe(dtype):
    """The mask is passed only to a model whose real-token logits do not change under masked left
    padding; a model that ignores it, or takes no such argument, is never given one. In bf16 the
    rounding alone exceeds a fixed 1% tolerance: the decision must hold in both dtypes."""
    model, tok = load(
        "tiny", seed=0, dtype=dtype, tiny_overrides=dict(init_std=0.3)
    )  # logits ~10: bf16 moves them ~0.8
    assert probe_padding_mask(model, tok.pad_token_id) and model.honours_padding_mask
    assert not probe_padding_mask(IgnoresMask(model), tok.pad_token_id)
    assert not probe_padding_mask(Opaque(model), tok.pad_token_id)


@pytest.mark.parametrize("honours", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_greedy_row_independent_of_batch_mates(honours, dtype):
    """A row's greedy decoding equals that row decoded alone, among prompts of other lengths, in float32
    and bf16: masked padding for a model that honours the mask (in float32), groups of equal padding for
    one that ignores it and in bf16 (where masked padding still moves a row's rounding)."""
    from sample import generate

    model, tok = load("tiny", seed=0, tiny_overrides=dict(init_std=0.3), dtype=dtype)
    model = model if honours else IgnoresMask(model)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(5, 100, (n,), generator=g).tolist() for n in (3, 9, 6, 12, 1, 7, 15, 4)]
    settings = dict(
        max_completion_length=8, block_length=4, sampling_steps=4, mask_id=tok.mask_token_id, pad_id=tok.pad_token_id
    )
    for unmasking in ("low_confidence", "threshold"):
        together = generate(model, prompts, unmasking=unmasking, threshold=0.5, **settings)
        for i, p in enumerate(prompts):
            alone = generate(model, [p], unmasking=unmasking, threshold=0.5, **settings)
            assert torch.equal(together.completion[i], alone.completion[0]), (unmasking, i)
            torch.testing.assert_close(together.logp[i], alone.logp[0], atol=1e-4, rtol=1e-5)


class Opaque(torch.nn.Module):
    """A model of no family the code knows: no config, no known layout."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, ids):
        return self.inner(ids)


@pytest.mark.parametrize("kind", ["tiny", "tiny+lora", "ignores mask"])
def test_logits_at_positions_equal_full_logits(kind):
    """forward_logits(at=...) projects only the selected positions: the values and the gradients
    must equal those of the full logits indexed afterwards, for each way a model is reached."""
    model, _ = load("tiny", seed=0)
    if kind == "tiny+lora":
        model = add_lora(model, 4, 8)
    elif kind == "ignores mask":
        model = IgnoresMask(model)
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


def test_an_unknown_family_stops_with_one_line(tmp_path):
    """A model of no declared family is refused at load, naming the families the code supports (a
    silent fallback would score the wrong positions of a model that predicts the next one)."""
    with pytest.raises(
        ValueError, match=r"Opaque \(model_type None\) is not a model family this code knows; supported: llada"
    ):
        family_of(Opaque(load("tiny")[0]))
    model, tok = load("tiny")
    save(model, tok, f"{tmp_path}/other")
    config = json.load(open(f"{tmp_path}/other/config.json"))
    json.dump(config | {"model_type": "gpt2", "auto_map": {}}, open(f"{tmp_path}/other/config.json", "w"))
    with pytest.raises(ValueError, match="not a model family this code knows"):
        load(f"{tmp_path}/other")


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


def test_compile_layers_matches_eager():
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
            compile_layers(model)
            assert list(model.state_dict()) == keys
        logits = forward_logits(model, ids, at=at)
        grads = torch.autograd.grad(
            logits.log_softmax(-1)[:, 20:40].sum(), [p for p in model.parameters() if p.requires_grad]
        )
        model.eval()
        tokens = generate(
            model,
            [[6, 30, 12, 31, 7], [6, 33, 7]],
            max_completion_length=8,
            block_length=4,
            sampling_steps=4,
            mask_id=tok.mask_token_id,
        )
        results.append((logits, grads, tokens.ids))
    (a, ga, ta), (b, gb, tb) = results
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    for x, y in zip(ga, gb):
        torch.testing.assert_close(y, x, atol=1e-5, rtol=1e-4)
    assert torch.equal(ta, tb)
    with pytest.raises(ValueError, match="Opaque"):
        compile_layers(Opaque(load("tiny")[0]))  # no family, no known blocks


def test_completion_ends_at_the_config_eos_only():
    """As in the paper's released run, a completion ends at the model config's eos_token_id (LLaDA:
    <|endoftext|>); the tokenizer's own eos (LLaDA: <|eot_id|>) is then ordinary content."""
    _, tok = load("tiny")
    assert tok.eos_ids == (tok.eos_token_id,)
    other = tok.convert_tokens_to_ids("<|bos|>")
    _, tok2 = load("tiny", tiny_overrides={"eos_token_id": other})
    assert tok2.eos_ids == (other,)


@pytest.mark.parametrize("name", ["tiny", "tiny_shifted", "tiny_block"])  # LLaDA's, Dream's and SDAR's conventions
def test_completion_ends_at_every_declared_end_id(tmp_path, name):
    """A model folder whose generation_config.json lists several eos ids (SDAR's and TraDo's: <|im_end|> and
    <|endoftext|>, their config.json <|endoftext|> alone) ends a completion at each, the config's first (the id
    that fills a finished row), an int as one id; a damaged generation_config.json stops the load, naming it."""
    from sample import decode_completions, generate

    model, tok = load(name)
    folder = str(tmp_path / name)
    save(model, tok, folder)
    bos, unk, eot = tok.convert_tokens_to_ids(["<|bos|>", "<|unk|>", "<|eot|>"])
    with open(f"{folder}/config.json") as f:
        config = json.load(f)
    with open(f"{folder}/config.json", "w") as f:
        json.dump(config | {"eos_token_id": eot}, f)
    with open(f"{folder}/generation_config.json", "w") as f:
        json.dump({"eos_token_id": [bos, eot]}, f)
    model, tok = load(folder)
    assert tok.eos_ids == (eot, bos)
    kw = dict(max_completion_length=16, block_length=8, sampling_steps=16, mask_id=tok.mask_token_id)
    rollout = generate(model, [[5, 6, 7]], **kw, eos_ids=tok.eos_ids)
    assert rollout.eos_ids == (eot, bos)
    for end, at in ((bos, 3), (eot, 5)):  # either id ends the text a reward reads
        ids = rollout.ids.clone()
        ids[0, rollout.prompt_length :] = 20
        ids[0, rollout.prompt_length + at] = end
        texts, lengths = decode_completions(tok, dataclasses.replace(rollout, ids=ids))
        assert int(lengths[0]) == at and texts[0] == tok.decode([20] * at, skip_special_tokens=True)
    with open(f"{folder}/generation_config.json", "w") as f:
        json.dump({"eos_token_id": unk}, f)
    assert load(folder)[1].eos_ids == (eot, unk)
    with open(f"{folder}/generation_config.json", "w") as f:
        f.write("{")
    with pytest.raises(ValueError, match="generation_config.json"):
        load(folder)


def test_merged_lora_is_the_trained_model():
    """eval.py folds adapters into the weights: in float32, the merged model decodes the same greedy
    tokens as the trained (unmerged) model and its logits agree to float32 rounding, also on a bf16
    base, where folding into bf16 weights would round every adapted weight again."""
    from plumbing.model import add_lora, merge_lora_float32
    from sample import generate

    base, tok = load("tiny", seed=7, dtype=torch.bfloat16)
    lora = add_lora(base, 8, 16)
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))))
    ids = torch.randint(10, 100, (4, 24), generator=torch.Generator().manual_seed(1))
    trained = copy.deepcopy(lora).float()  # the trained function, computed in float32
    with torch.no_grad():
        want = trained(ids).logits
        bf16_merge = copy.deepcopy(lora).merge_and_unload()(ids).logits.float()
        merged = merge_lora_float32(copy.deepcopy(lora))
        got = merged(ids).logits
    assert next(merged.parameters()).dtype == torch.float32
    assert (got - want).abs().max() < 1e-4 < (bf16_merge - want).abs().max()
    prompts = [[5 + i, 40, 41, 42] for i in range(4)]
    kw = dict(
        max_completion_length=16, block_length=8, sampling_steps=16, mask_id=tok.mask_token_id, eos_ids=tok.eos_ids
    )
    assert torch.equal(generate(trained, prompts, **kw).ids, generate(merged, prompts, **kw).ids)


def test_a_next_token_head_reads_the_position_before(tmp_path):
    """A family with shift 1 (Dream's convention; the embedded model as tiny_shifted): token i's logits
    are position i - 1's, for all positions, a mask of positions and a block of columns, padded or
    not; a rollout replays exactly (recorded log-probs = recomputed), and the variant saves and loads."""
    from conftest import chat

    from likelihood import exact_logp
    from plumbing.families import FAMILIES, family_of
    from plumbing.logits import forward_logits
    from plumbing.model import save
    from sample import generate

    model, tok = load("tiny_shifted", seed=0, tiny_overrides=dict(init_std=0.3))
    assert family_of(model) is FAMILIES["tiny_shifted"] and FAMILIES["tiny_shifted"].shift == 1
    ids = torch.randint(10, 60, (3, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        raw = model(ids).logits
        full = forward_logits(model, ids)
        torch.testing.assert_close(full[:, 1:], raw[:, :-1])
        at = torch.zeros(3, 12, dtype=torch.bool)
        at[:, 5:9] = True
        torch.testing.assert_close(forward_logits(model, ids, at=at), raw[:, 4:8].reshape(-1, raw.shape[-1]))
        torch.testing.assert_close(forward_logits(model, ids, at=(slice(None), slice(8, 12))), raw[:, 7:11])
        torch.testing.assert_close(forward_logits(model, ids, at=(slice(None), slice(8, None))), raw[:, 7:11])
        mask = torch.ones(3, 12, dtype=torch.long)
        mask[0, :3] = 0  # left padding: the row's logits are those of the row alone
        alone = forward_logits(model, ids[:1, 3:], at=(slice(None), slice(4, 9)))
        padded = forward_logits(model, ids, mask, at=(slice(None), slice(7, 12)))[:1]
        torch.testing.assert_close(padded, alone, atol=1e-4, rtol=1e-5)  # RoPE: the same up to float rounding
        with pytest.raises(ValueError, match="position"):
            forward_logits(model, ids, at=(slice(None), slice(0, 4)))
    prompts = [chat(tok, "Using the numbers [1, 2, 3], make 7."), chat(tok, "2+3")]
    r = generate(
        model,
        prompts,
        max_completion_length=16,
        block_length=8,
        sampling_steps=16,
        mask_id=tok.mask_token_id,
        eos_ids=tok.eos_ids,
        pad_id=tok.pad_token_id,
        temperature=0.9,
        unmasking="random",
        generator=torch.Generator().manual_seed(0),
    )
    with torch.no_grad():
        torch.testing.assert_close(exact_logp(model, r), r.logp.sum(1), atol=1e-4, rtol=1e-5)
    save(model, tok, str(tmp_path / "shifted"))
    again, _ = load(str(tmp_path / "shifted"))
    assert family_of(again).shift == 1
    with torch.no_grad():
        torch.testing.assert_close(forward_logits(again, ids), full)


def test_a_block_causal_model_attends_no_later_block(tmp_path):
    """The embedded model as a block-diffusion model (tiny_block, blocks of 8 counted from the first token):
    changing a later block leaves every earlier position's logits bit for bit; greedy decoding of
    prompts of different lengths in one batch equals each alone; a sampled rollout replays exactly;
    the sampler refuses blocks that are not the model's; the variant saves and loads."""
    from conftest import chat

    from likelihood import exact_logp
    from plumbing.families import FAMILIES, block_size, family_of
    from plumbing.logits import forward_logits
    from plumbing.model import save
    from sample import generate

    model, tok = load("tiny_block", seed=0, tiny_overrides=dict(init_std=0.3))
    assert family_of(model) is FAMILIES["tiny_block"] and block_size(model) == 8
    # the config's block size wins; a config naming none (SDAR's) gets the family's
    assert block_size(load("tiny_block", tiny_overrides=dict(block_size=12))[0]) == 12
    assert block_size(load("tiny_block", tiny_overrides=dict(block_size=0))[0]) == FAMILIES["tiny_block"].block_size
    ids = torch.randint(10, 60, (2, 27), generator=torch.Generator().manual_seed(0))  # a partial first block
    later = ids.clone()
    later[:, 16:] = tok.mask_token_id  # blocks from the first token: 16 starts the third
    with torch.no_grad():
        assert torch.equal(forward_logits(model, ids)[:, :16], forward_logits(model, later)[:, :16])
        assert not torch.equal(forward_logits(model, ids)[:, 16:], forward_logits(model, later)[:, 16:])
    kw = dict(max_completion_length=16, block_length=8, mask_id=tok.mask_token_id, eos_ids=tok.eos_ids)
    kw["pad_id"] = tok.pad_token_id
    prompts = [chat(tok, "Using the numbers [1, 2, 3], make 7."), chat(tok, "2+3"), chat(tok, "9 9 -> 81")]
    batch = generate(model, prompts, sampling_steps=16, **kw)
    for i, p in enumerate(prompts):  # a row decodes its own whole blocks; past them, EOS
        alone = generate(model, [p], sampling_steps=16, **kw).completion[0]
        assert torch.equal(batch.completion[i, : len(alone)], alone)
        assert bool((batch.completion[i, len(alone) :] == tok.eos_ids[0]).all())
    r = generate(model, prompts, sampling_steps=16, temperature=0.9, generator=torch.Generator().manual_seed(0), **kw)
    with torch.no_grad():
        torch.testing.assert_close(exact_logp(model, r), r.logp.sum(1), atol=1e-4, rtol=1e-5)
    with pytest.raises(ValueError, match="block size 8"):
        generate(model, prompts, sampling_steps=16, **(kw | dict(block_length=4)))
    save(model, tok, str(tmp_path / "block"))
    again, _ = load(str(tmp_path / "block"))
    assert block_size(again) == 8
    with torch.no_grad():
        assert torch.equal(forward_logits(again, ids), forward_logits(model, ids))


def test_full_logits_of_rows_sharing_a_padding_length_on_mask_ignoring_code():
    """forward_logits without `at` on code that ignores the mask: rows of equal padding run together with
    it cut off, and each row's logits are its own (two of three rows share a padding length)."""
    model, tok = load("tiny", seed=0)
    model = IgnoresMask(model)
    ids = torch.randint(10, 100, (3, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, :3], mask[2, :3], mask[1, :1] = 0, 0, 0
    with torch.no_grad():
        logits = forward_logits(model, ids, mask)
        for row in range(3):
            pad = int((mask[row] == 0).sum())
            alone = forward_logits(model, ids[row : row + 1, pad:])
            torch.testing.assert_close(logits[row, pad:], alone[0], atol=1e-5, rtol=1e-5)


def fused_loss_folder(tmp_path):
    """A model folder whose config asks for SDAR's fused loss (`fuse_cross_entropy`: true) and whose code,
    as SDAR's does, then returns no logits in train mode."""
    model, tok = load("tiny", seed=0)
    folder = str(tmp_path / "fused")
    save(model, tok, folder)
    with open(f"{folder}/config.json") as f:
        config = json.load(f)
    with open(f"{folder}/config.json", "w") as f:
        json.dump(config | {"fuse_cross_entropy": True}, f)
    code = open(f"{folder}/tiny_llada.py").read()
    head = 'return MaskedLMOutput(logits=t["ff_out"](t["ln_f"](x)))'
    fused = 'return MaskedLMOutput(logits=None if getattr(self.config, "fuse_cross_entropy", False) and self.training '
    with open(f"{folder}/tiny_llada.py", "w") as f:
        f.write(code.replace(head, fused + 'else t["ff_out"](t["ln_f"](x)))'))
    return folder


def test_a_config_asking_for_a_fused_loss_still_trains(tmp_path):
    """SDAR-8B-Chat's config.json sets fuse_cross_entropy, with which its forward returns no logits in train
    mode: load turns it off, and a training step runs on the model's logits."""
    from likelihood import exact_logp
    from sample import generate

    model, tok = load(fused_loss_folder(tmp_path))
    assert model.config.fuse_cross_entropy is False
    rollout = generate(model, [[5, 6, 7]], max_completion_length=8, block_length=8, sampling_steps=8, mask_id=1)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    (-exact_logp(model, rollout).sum()).backward()
    opt.step()


def old_generation_config(fail=False):
    """Dream's DreamGenerationConfig as Fast-dLLM and dLLM-RL ship it: a validate() without `strict`; with
    `fail`, one whose validate() raises once built."""
    from transformers import GenerationConfig

    class DreamGenerationConfig(GenerationConfig):
        def validate(self, is_init=False):
            super().validate()

    class Failing(DreamGenerationConfig):
        def validate(self, is_init=False):
            raise TypeError("validate() failed in the model's own code")

    config = DreamGenerationConfig()
    config.__class__ = Failing if fail else DreamGenerationConfig
    return config


def test_a_generation_config_that_predates_strict_saves(tmp_path, monkeypatch):
    """A model whose generation config's validate() takes no `strict` (Dream's copies) saves as a folder, a
    checkpoint and an export; a save that fails in the model's own code leaves no half-written folder."""
    from plumbing import checkpoint
    from plumbing.tiny_llada import TinyLLaDAModel

    monkeypatch.setattr(TinyLLaDAModel, "can_generate", classmethod(lambda cls: True))
    model, tok = load("tiny", seed=0)
    model.generation_config = old_generation_config()
    save(model, tok, str(tmp_path / "saved"))
    assert os.path.exists(tmp_path / "saved" / "generation_config.json")
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    run = str(tmp_path / "run")
    os.makedirs(run)
    checkpoint.save(run, 1, model, opt, sched, {"model_name_or_path": "tiny"}, tok=tok)
    assert os.path.exists(f"{run}/checkpoint-1/generation_config.json")
    model.generation_config = old_generation_config(fail=True)
    with pytest.raises(TypeError):
        checkpoint.save(run, 2, model, opt, sched, {"model_name_or_path": "tiny"}, tok=tok)
    with pytest.raises(TypeError):
        save(model, tok, str(tmp_path / "again"))
    assert sorted(os.listdir(run)) == ["checkpoint-1"] and not os.path.exists(tmp_path / "again.tmp")


def test_start_up_warns_where_decoding_departs_from_the_models_own():
    """One warning line per departure from the model's own decoding: none for LLaDA's sampler or SDAR's
    threshold decoding at T = 1, Dream's schedule always, a tempered ranking where the family's own code
    ranks by the tempered, truncated probability."""
    from types import SimpleNamespace

    from plumbing.families import native_departures

    class Stub(torch.nn.Module):
        def __init__(self, model_type):
            super().__init__()
            self.config = SimpleNamespace(model_type=model_type)

    assert native_departures(Stub("llada"), "random", 0.6, 150, 0.99) == []
    assert native_departures(Stub("sdar"), "threshold", 1.0, None, 1.0) == []
    assert native_departures(Stub("sdar"), "threshold", 0.0) == []
    assert len(native_departures(Stub("sdar"), "low_confidence", 0.6)) == 1
    assert len(native_departures(Stub("Dream"), "low_confidence", 0.0)) == 1
    assert len(native_departures(Stub("Dream"), "low_confidence", 0.2, None, 0.95)) == 2
