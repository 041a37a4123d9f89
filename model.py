"""The denoiser p_θ(x_0 | x_t): one bidirectional forward pass predicts every position.

Two kinds behind one `load`:
- "tiny": an embedded LLaDA-like masked LM (RMSNorm, SwiGLU, RoPE, no causal mask) with a
  character-level tokenizer, built entirely from this file; no network, no weights to fetch.
  A directory holding `tiny_config.json` loads a trained tiny checkpoint.
- any other name or path: LLaDA (e.g. GSAI-ML/LLaDA-8B-Instruct) through its remote code,
  `AutoModel.from_pretrained(..., trust_remote_code=True)` in bf16.

Both return `model(input_ids, attention_mask=...).logits` of shape (B, L, V). The linear layers
of the tiny model carry LLaDA's names (q_proj, k_proj, v_proj, attn_out, ff_proj, up_proj,
ff_out) so one LoRA target list fits both.
"""

import json
import math
import os
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers.modeling_outputs import MaskedLMOutput

LLADA_MASK_ID = 126336
LLADA_EOS_IDS = (126081, 126348)  # <|endoftext|>, <|eot_id|>
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out"]

# ---------------------------------------------------------------------------------------------
# tokenizer of the embedded model: one token per ASCII character, plus specials and the tags
# of the reasoning format, so a completion like "<think>..</think><answer>..</answer>" is short.

TINY_SPECIALS = ["<|pad|>", "<|mask|>", "<|eot|>", "<|bos|>", "<|unk|>"]
TINY_ROLES = ["<|system|>", "<|user|>", "<|assistant|>"]
TINY_TAGS = ["<think>", "</think>", "<answer>", "</answer>"]
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}"
    "{% if m['role'] != 'assistant' %}<|eot|>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def tiny_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [chr(i) for i in range(32, 127)] + ["\n"]
    vocab = {t: i for i, t in enumerate(TINY_SPECIALS + TINY_ROLES + TINY_TAGS + chars)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<|unk|>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tk.decoder = decoders.Fuse()
    tk.add_special_tokens(TINY_SPECIALS + TINY_ROLES)
    tk.add_tokens(TINY_TAGS)  # not special: they survive decode(skip_special_tokens=True)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        pad_token="<|pad|>",
        mask_token="<|mask|>",
        eos_token="<|eot|>",
        bos_token="<|bos|>",
        unk_token="<|unk|>",
    )
    tok.chat_template = TINY_CHAT_TEMPLATE
    return tok


# ---------------------------------------------------------------------------------------------
# the embedded model


@dataclass
class TinyConfig:
    vocab_size: int = 128
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 384
    rope_theta: float = 10000.0
    init_std: float = 0.02


class RMSNorm(nn.Module):
    def __init__(self, d, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.weight.float()).to(x.dtype)


def rope(x, theta):
    """Rotary embedding on (B, H, L, D). Scores then depend only on relative position, which is
    what makes left padding (masked out of attention) leave a row's outputs unchanged."""
    L, D = x.shape[-2], x.shape[-1]
    inv_freq = 1.0 / theta ** (torch.arange(0, D, 2, device=x.device, dtype=torch.float32) / D)
    ang = torch.arange(L, device=x.device, dtype=torch.float32)[:, None] * inv_freq[None]
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x1, x2 = x[..., : D // 2], x[..., D // 2 :]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Block(nn.Module):
    def __init__(self, c: TinyConfig):
        super().__init__()
        self.n_heads, self.theta = c.n_heads, c.rope_theta
        self.attn_norm = RMSNorm(c.d_model)
        self.q_proj = nn.Linear(c.d_model, c.d_model, bias=False)
        self.k_proj = nn.Linear(c.d_model, c.d_model, bias=False)
        self.v_proj = nn.Linear(c.d_model, c.d_model, bias=False)
        self.attn_out = nn.Linear(c.d_model, c.d_model, bias=False)
        self.ff_norm = RMSNorm(c.d_model)
        self.ff_proj = nn.Linear(c.d_model, c.d_ff, bias=False)  # gate
        self.up_proj = nn.Linear(c.d_model, c.d_ff, bias=False)
        self.ff_out = nn.Linear(c.d_ff, c.d_model, bias=False)

    def forward(self, x, attn_mask):
        B, L, D = x.shape
        h = self.attn_norm(x)
        q, k, v = (p(h).view(B, L, self.n_heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        q, k = rope(q, self.theta), rope(k, self.theta)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # bidirectional
        x = x + self.attn_out(a.transpose(1, 2).reshape(B, L, D))
        h = self.ff_norm(x)
        return x + self.ff_out(F.silu(self.ff_proj(h)) * self.up_proj(h))


class TinyLLaDA(nn.Module):
    accepts_padding_mask = True  # see forward_logits

    def __init__(self, config: TinyConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.d_model)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.gradient_checkpointing = False
        for name, p in self.named_parameters():
            if p.dim() == 2:
                # residual projections scaled down with depth (GPT-2 style) keep early training stable
                residual = name.endswith(("attn_out.weight", "ff_out.weight"))
                nn.init.normal_(p, std=config.init_std / (math.sqrt(2 * config.n_layers) if residual else 1.0))

    def forward(self, input_ids, attention_mask=None, logits_at=None):
        """logits_at: index into the (B, L) positions (a bool mask, or a tuple of slices); only those
        get the vocabulary projection, the largest matmul of a small model and the largest tensor
        of a big one."""
        x = self.wte(input_ids)
        # key-padding mask: (B, 1, 1, L), True = may attend. Pad queries still see real keys, so no NaN.
        attn_mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
        for block in self.blocks:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, attn_mask, use_reentrant=False)
            else:
                x = block(x, attn_mask)
        x = x if logits_at is None else x[logits_at]
        return MaskedLMOutput(logits=self.lm_head(self.norm(x)))


# ---------------------------------------------------------------------------------------------
# loading, saving, checks


def load(name_or_path="tiny", *, device="cpu", dtype=None, gradient_checkpointing=False, seed=0, tiny_overrides=None):
    """Return (model, tokenizer). The tokenizer always carries `mask_token_id` and `eos_token_id`;
    `tokenizer.eos_ids` lists every id that ends a completion."""
    if name_or_path == "tiny":
        tok = tiny_tokenizer()
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
            torch.manual_seed(seed)
            model = TinyLLaDA(TinyConfig(**({"vocab_size": len(tok)} | (tiny_overrides or {}))))
        tok.eos_ids = (tok.eos_token_id,)
    elif os.path.isdir(name_or_path) and os.path.exists(os.path.join(name_or_path, "tiny_config.json")):
        model, tok = load_tiny_checkpoint(name_or_path)
    else:
        model, tok = _load_llada(name_or_path, dtype or torch.bfloat16)
    model = model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
    check_compatible(model, tok)
    if gradient_checkpointing:
        set_gradient_checkpointing(model)
    return model, tok


def model_path_error(name):
    """None if `name` can be loaded as given ("tiny", an existing path, or a hub id "org/name"),
    else one line saying why not. Checked by the scripts before any heavy work."""
    if name == "tiny" or os.path.exists(name):
        return None
    # runs/ is where this project writes, so runs/x is a missing run folder, never a hub id
    looks_local = name.startswith((".", "/", "~", "runs/")) or name.count("/") != 1 or os.path.isdir(name.split("/")[0])
    if looks_local:
        return f"{name} does not exist (give 'tiny', a local model directory, or a hub id like GSAI-ML/LLaDA-8B-Instruct)"
    return None


def _load_llada(name_or_path, dtype):
    from transformers import AutoModel, AutoTokenizer

    problem = model_path_error(name_or_path)
    if problem:
        raise ValueError(problem)
    try:
        tok = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=True)
        model = AutoModel.from_pretrained(name_or_path, trust_remote_code=True, torch_dtype=dtype)
    except (OSError, ValueError) as e:  # no such hub id, no network, files missing from the directory
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"cannot load model {name_or_path!r}: {first}") from None
    if tok.mask_token_id is None:
        # LLaDA's tokenizer has no mask token declared; its config carries the id (126336).
        mask_id = getattr(model.config, "mask_token_id", None)
        if mask_id is None:
            raise ValueError(f"tokenizer of {name_or_path!r} has no mask token and the model config has no mask_token_id")
        tok.mask_token = tok.convert_ids_to_tokens(int(mask_id))
    eos = [i for i in (tok.eos_token_id, *LLADA_EOS_IDS) if i is not None and i < len(tok)]
    tok.eos_ids = tuple(dict.fromkeys(eos))
    if tok.pad_token_id is None:
        tok.pad_token_id = tok.eos_token_id
    return model, tok


def forward_logits(model, ids, attention_mask=None, at=None):
    """Logits (B, L, V), or with `at` only logits[at]: `at` indexes the (B, L) positions, a bool mask
    (giving (N, V) in row-major order) or a tuple of slices such as (slice(None), slice(lo, hi)).
    Only those positions go through the vocabulary projection: the sampler reads one block, the
    estimators read the tokens of one step, and for LLaDA-8B the full (B, L, 126464) logits and their
    gradient are the largest tensors of an update.

    The padding mask is passed only to models that honour it as a bidirectional key mask: LLaDA's
    hub code ignores `attention_mask` and some copies of it turn a padded mask into a *causal* bias,
    so for LLaDA left padding is attended, as in its own pipelines (batches of one prompt's group
    have no padding at all)."""
    bare = unwrap(model)
    kw = {"attention_mask": attention_mask} if attention_mask is not None and getattr(bare, "accepts_padding_mask", False) else {}
    if at is None:
        return model(ids, **kw).logits
    if isinstance(bare, TinyLLaDA):
        return model(ids, logits_at=at, **kw).logits
    final_norm = _final_norm(bare)
    if final_norm is None:  # an unknown architecture: project everything, then select
        return model(ids, **kw).logits[at]
    # LLaDA: x = ln_f(x); logits = ff_out(x). Selecting ln_f's output selects what ff_out projects.
    handle = final_norm.register_forward_hook(lambda module, inputs, out: out[at])
    try:
        logits = model(ids, **kw).logits
    finally:
        handle.remove()
    expected = (int(at.sum()),) if torch.is_tensor(at) else torch.empty(ids.shape, device="meta")[at].shape
    if logits.shape[:-1] != expected:
        name, got = type(bare).__name__, tuple(logits.shape)
        raise RuntimeError(f"{name}: logits of shape {got} after selecting positions, expected {tuple(expected)} + (vocab,)")
    return logits


def _llada_part(bare, name):
    """A module of LLaDA's model.transformer (ModuleDict) by name, or None for another architecture."""
    transformer = getattr(getattr(bare, "model", None), "transformer", None)
    return transformer[name] if isinstance(transformer, nn.ModuleDict) and name in transformer else None


def _final_norm(bare):
    """LLaDA's final norm (model.transformer.ln_f), whose output is exactly what its head projects."""
    return _llada_part(bare, "ln_f")


def model_vocab_size(model):
    """Size of the logits' last dimension, read from one forward pass (config fields differ by model)."""
    p = next(model.parameters())
    with torch.no_grad():
        return forward_logits(model, torch.zeros(1, 2, dtype=torch.long, device=p.device)).shape[-1]


def check_compatible(model, tok):
    if tok.mask_token_id is None:
        raise ValueError("tokenizer has no mask token: a masked diffusion LM needs `mask_token_id`")
    if tok.eos_token_id is None:
        raise ValueError("tokenizer has no eos token: completions could never end")
    V = model_vocab_size(model)
    if len(tok) > V or tok.mask_token_id >= V:
        raise ValueError(f"tokenizer ({len(tok)} tokens, mask id {tok.mask_token_id}) does not fit the model's logits vocabulary of {V}")


def unwrap(model):
    """The bare model under DDP and/or peft wrappers."""
    model = getattr(model, "module", model)  # DDP
    if hasattr(model, "get_base_model"):  # peft
        model = model.get_base_model()
    return model


def add_lora(model, rank, alpha, under_autocast=False):
    """LoRA adapters (peft) on LORA_TARGETS; only they are trained, and `disable_adapter()`
    gives the base model back as the reference policy.

    peft keeps the adapters in float32 (right for Adam) and casts every adapter's input to float32:
    on a bf16 model that is a full copy of the activations, there and back, at each adapted layer.
    `under_autocast`: the model only ever runs under bf16 autocast, which casts the matmul inputs to
    bf16 anyway, so the copy changes no number (tested) and is skipped."""
    from peft import LoraConfig, get_peft_model
    from peft.tuners.tuners_utils import BaseTunerLayer

    model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=LORA_TARGETS))
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.cast_input_dtype_enabled = not under_autocast
    return model


def set_gradient_checkpointing(model):
    m = unwrap(model)
    if isinstance(m, TinyLLaDA):
        m.gradient_checkpointing = True
    elif hasattr(getattr(m, "model", None), "set_activation_checkpointing"):
        # LLaDA's own mechanism; the HF flag does nothing for its remote code.
        from importlib import import_module

        strategy = import_module(type(m.model).__module__).ActivationCheckpointingStrategy.whole_layer
        m.model.set_activation_checkpointing(strategy)
    else:
        m.gradient_checkpointing_enable()


def compile_blocks(model):
    """torch.compile each transformer block in place (regional compilation): the blocks share one
    code path, so one graph is compiled and reused by all, and norms, RoPE and SwiGLU fuse into few
    kernels. The vocabulary head and the position selection stay eager: their shapes depend on the
    data. Shapes that change (rows finishing, prompt lengths) recompile once, then run dynamic."""
    bare = unwrap(model)
    if isinstance(bare, TinyLLaDA):
        blocks = bare.blocks
    else:  # LLaDA: model.transformer.blocks (block_group_size 1, as LLaDA-8B)
        blocks = _llada_part(bare, "blocks")
    if blocks is None:
        raise ValueError(f"compile: cannot find the transformer blocks of {type(bare).__name__}")
    for block in blocks:
        block.compile()
    return model


def save_tiny_checkpoint(model, path):
    """Write config + weights into directory `path` atomically (temp file, then rename)."""
    m = unwrap(model)
    os.makedirs(path, exist_ok=True)
    tmp = os.path.join(path, "model.pt.tmp")
    torch.save(m.state_dict(), tmp)
    os.replace(tmp, os.path.join(path, "model.pt"))
    with open(os.path.join(path, "tiny_config.json.tmp"), "w") as f:
        json.dump(asdict(m.config), f)
    os.replace(os.path.join(path, "tiny_config.json.tmp"), os.path.join(path, "tiny_config.json"))


def load_tiny_checkpoint(path):
    with open(os.path.join(path, "tiny_config.json")) as f:
        cfg = json.load(f)
    unknown = set(cfg) - set(TinyConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(f"{path}/tiny_config.json: unknown fields {sorted(unknown)}")
    tok = tiny_tokenizer()
    tok.eos_ids = (tok.eos_token_id,)
    model = TinyLLaDA(TinyConfig(**cfg))
    state = torch.load(os.path.join(path, "model.pt"), map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}/model.pt does not match tiny_config.json: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model, tok
