"""Shared by the benchmarks: the rollout shape the timing benches take (the config block below, keys
as train.py names them), the models they time, a measured matmul peak, FLOP counts, and the
comparisons' way of running a project script."""

import contextlib
import json
import os
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from plumbing.configurator import configure  # noqa: E402
from plumbing.model import load  # noqa: E402
from plumbing.tiny_llada import TinyBlockConfig, TinyBlockModel, TinyLLaDAConfig, TinyLLaDAModel, build_tokenizer  # noqa: E402


def run_script(threads, script, *args):
    """`python script args` in the project root on `threads` CPU threads, its output dropped; a
    failure raises RuntimeError with the end of its stderr (a comparison stops at the first one)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    res = subprocess.run(
        [sys.executable, script, *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
    )
    if res.returncode:
        raise RuntimeError(f"{script} {' '.join(args)} failed:\n{res.stderr[-3000:]}")


def run_unless_done(threads, folder, inputs, script, *args):
    """run_script(threads, script, *args) unless `folder` holds what it wrote for the same `inputs` (a JSON
    value, recorded in folder/inputs.json once the script succeeds): a comparison called again redoes what
    its settings change and reuses the rest. Returns whether the script ran."""
    record, inputs = os.path.join(folder, "inputs.json"), json.loads(json.dumps(inputs))  # tuples as JSON reads them
    if os.path.isfile(record) and json.load(open(record)) == inputs:
        return False
    run_script(threads, script, *args)
    os.makedirs(folder, exist_ok=True)
    with open(record, "w") as f:
        json.dump(inputs, f, indent=1)
    return True


def train_config(train_argv):
    """train.py's resolved config for these arguments, presets read as they are now."""
    from plumbing import data

    return configure(os.path.join(ROOT, "train.py"), train_argv, data.option_files())


def comparison_config(script, default_preset="configs/tiny_countdown.py"):
    """(the comparison's own config, train.py's config every run shares, train.py's arguments):
    `python bench/x.py [preset.py ...] [--key=value ...]`, where a key of the script's config block
    is the script's and any other key goes to every train.py run, as presets do."""
    from types import SimpleNamespace

    from plumbing.configurator import declared

    argv = sys.argv[1:]
    own_keys = declared(script)
    own = [
        a
        for a in argv
        if a.startswith("-") and a.lstrip("-").partition("=")[0] in (*own_keys, "help", "h", "print_config")
    ]
    train_argv = [a for a in argv if a not in own]
    if not any(not a.startswith("-") for a in train_argv):
        train_argv.insert(0, default_preset)
    args = SimpleNamespace(**configure(script, own))
    return args, train_config(train_argv), train_argv


# LLaDA-8B's shape (its config.json): a randomly initialised copy needs no download
LLADA_8B = dict(vocab_size=126464, d_model=4096, n_layers=32, n_heads=32, d_ff=12288, rope_theta=500000.0)


def bench_model(which, device, block_size=0):
    """(model, mask_id, eos_id, vocab): 'tiny' (the embedded model) or 'llada8b' (random, bf16);
    block_size > 0: the same with block-causal attention in blocks of that size (tiny_llada's
    TinyBlockModel; the tiny one with peaked outputs, init_std 0.3, so greedy choices are not ties)."""
    config_class, model_class = (TinyBlockConfig, TinyBlockModel) if block_size else (TinyLLaDAConfig, TinyLLaDAModel)
    blocks = dict(block_size=block_size) if block_size else {}
    if which == "tiny":
        name, overrides = ("tiny_block", dict(blocks, init_std=0.3)) if block_size else ("tiny", None)
        model, tok = load(name, device=device, tiny_overrides=overrides)
        return model.eval(), tok.mask_token_id, tok.eos_token_id, len(tok)
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # build in bf16 directly: 16 GB, not 32 GB then a copy
    with torch.device(device):
        model = model_class(config_class(**LLADA_8B, mask_token_id=126336, **blocks))
    torch.set_default_dtype(default)
    assert len(build_tokenizer()) < LLADA_8B["vocab_size"]
    return model.eval(), 126336, 126081, LLADA_8B["vocab_size"]  # LLaDA's mask and EOS ids


def amp(device):
    """train.py's precision: bf16 autocast on CUDA (its `autocast` knob, on by default), none on CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if str(device).startswith("cuda") else contextlib.nullcontext()


def print_profile(fn, device, rows=15):
    """One more call of fn under torch.profiler: the ops that took the most time, to see where it goes."""
    from torch.profiler import ProfilerActivity, profile

    cuda = str(device).startswith("cuda")
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        fn()
        sync(device)
    print(
        prof.key_averages().table(sort_by="self_device_time_total" if cuda else "self_cpu_time_total", row_limit=rows)
    )


# --- config
model_shape = "tiny"  # tiny: the embedded model | llada8b: a random model of LLaDA-8B's shape, bf16
device = ""  # cuda | cpu ("" = cuda when there is one)
per_device_train_batch_size = 8  # sequences of the rollout
prompt_length = 128  # prompt tokens (random ids)
max_completion_length = 256  # G: completion tokens
block_length = 32  # semi-autoregressive block size
sampling_steps = 128  # m: unmasking steps
repeats = 3  # timed calls (after one warm-up)
compile = False  # torch.compile each transformer layer (model.compile_layers)
profile = False  # print the ops that take the most time
quick = False  # tiny sizes: checks the script runs
# --- end of config


def shape_config(script):
    """The config of a timing bench: its own keys and the shape above, --quick shrinking the shape; a shape the
    sampler refuses (sample.check_settings) stops here in one line."""
    from types import SimpleNamespace

    args = SimpleNamespace(**configure(script, option_files=[os.path.abspath(__file__)]))
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.quick:
        args.per_device_train_batch_size, args.prompt_length, args.max_completion_length = 4, 16, 32
        args.block_length, args.sampling_steps, args.repeats = 16, 16, 1
    from sample import check_settings

    try:  # before a model is built: a shape generate would refuse ends here in one line
        check_settings(args.max_completion_length, args.block_length, args.sampling_steps)
    except ValueError as e:
        sys.exit(f"{os.path.basename(script)}: {e}")
    return args


def random_tokens(shape, vocab, mask_id, generator):
    """Ordinary token ids (never the mask) for synthetic prompts and rollouts."""
    ids = torch.randint(10, min(vocab, 100_000) - 1, shape, generator=generator)
    ids[ids == mask_id] = 11
    return ids


def matmul_params(model):
    """Parameters that take part in matrix multiplies (the embedding lookup does not)."""
    return sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and not n.startswith("wte"))


def forward_flops(model, batch, seq, head_tokens=None):
    """2·N·tokens for the weights plus 4·L²·d per layer and sequence for attention scores and values.
    The vocabulary head counts only on `head_tokens` positions (default: all): the positions whose
    logits the algorithm reads, so a forward that skips the others is not credited for them."""
    c = model.config
    head = c.d_model * c.vocab_size
    head_tokens = batch * seq if head_tokens is None else head_tokens
    body = 2 * (matmul_params(model) - head) * batch * seq + 4 * c.n_layers * batch * seq * seq * c.d_model
    return body + 2 * head * head_tokens


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def measured_peak_flops(device, dtype, n=None, repeats=10):
    """FLOP/s of a large square matmul on this machine: the ceiling the MFU figures are against."""
    n = n or (8192 if str(device).startswith("cuda") else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - t0)


def environment(device):
    cuda = str(device).startswith("cuda")
    gpu = f"{torch.cuda.get_device_name()}, bf16 autocast" if cuda else f"CPU, {torch.get_num_threads()} threads"
    return f"{gpu}; torch {torch.__version__}"
