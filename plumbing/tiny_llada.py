"""The embedded model: a tiny LLaDA-like masked diffusion LM as a Hugging Face model.

p_θ(x_0 | x_t): one bidirectional forward pass (no causal mask) predicts every position of a
partially masked sequence. RMSNorm, SwiGLU, rotary positions, as LLaDA-8B, at 0.9M parameters.

The module tree mirrors LLaDA's remote code (`model.transformer` = wte, blocks, ln_f, ff_out; block
layers named q_proj, k_proj, v_proj, attn_out, ff_proj, up_proj, ff_out), so LoRA targets, the
head hook of logits.forward_logits and regional compilation take the same path for both models.

This file imports only torch and transformers: `save_pretrained` copies it into the model folder
with an `auto_map`, so `AutoModel.from_pretrained(folder, trust_remote_code=True)` loads a saved
model without this project, as LLaDA loads from its hub repository. The tokenizer (one token per
ASCII character, plus specials and the reasoning-format tags) is a `PreTrainedTokenizerFast` saved
beside it as tokenizer.json.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput

SPECIALS = ["<|pad|>", "<|mask|>", "<|eot|>", "<|bos|>", "<|unk|>"]
ROLES = ["<|system|>", "<|user|>", "<|assistant|>"]
TAGS = ["<think>", "</think>", "<answer>", "</answer>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}"
    "{% if m['role'] != 'assistant' %}<|eot|>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_tokenizer():
    """The character tokenizer: short completions like "<think>..</think><answer>..</answer>"."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [chr(i) for i in range(32, 127)] + ["\n"]
    vocab = {t: i for i, t in enumerate(SPECIALS + ROLES + TAGS + chars)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<|unk|>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tk.decoder = decoders.Fuse()
    tk.add_special_tokens(SPECIALS + ROLES)
    tk.add_tokens(TAGS)  # not special: they survive decode(skip_special_tokens=True)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        pad_token="<|pad|>",
        mask_token="<|mask|>",
        eos_token="<|eot|>",
        bos_token="<|bos|>",
        unk_token="<|unk|>",
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


class TinyLLaDAConfig(PretrainedConfig):
    model_type = "tiny_llada"

    def __init__(
        self,
        vocab_size=128,
        d_model=128,
        n_layers=4,
        n_heads=4,
        d_ff=384,
        rope_theta=10000.0,
        init_std=0.02,
        mask_token_id=1,
        block_size=0,
        **kwargs,
    ):
        self.vocab_size, self.d_model, self.n_layers, self.n_heads, self.d_ff = (
            vocab_size,
            d_model,
            n_layers,
            n_heads,
            d_ff,
        )
        self.rope_theta, self.init_std, self.mask_token_id = rope_theta, init_std, mask_token_id
        self.block_size = block_size  # > 0: block-causal attention (TinyBlockModel)
        super().__init__(**kwargs)


class RMSNorm(nn.Module):
    def __init__(self, d, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.weight.float()).to(x.dtype)


def rope(x, theta, positions=None):
    """Rotary embedding on (B, H, L, D) at `positions` (B or 1, L), default 0..L-1. Scores depend only
    on relative position, which is what makes left padding (masked out of attention) leave a row's
    outputs unchanged, and lets a block be run alone at its own positions (a KV cache, packed copies)."""
    L, D = x.shape[-2], x.shape[-1]
    inv_freq = 1.0 / theta ** (torch.arange(0, D, 2, device=x.device, dtype=torch.float32) / D)
    if positions is None:
        ang = torch.arange(L, device=x.device, dtype=torch.float32)[:, None] * inv_freq[None]
    else:
        ang = (positions.float()[..., None] * inv_freq)[:, None]  # (B, 1, L, D/2)
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x1, x2 = x[..., : D // 2], x[..., D // 2 :]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Block(nn.Module):
    def __init__(self, c):
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
        # residual projections start scaled down with depth (GPT-2 style): early training is stable
        self.attn_out.residual_init = self.ff_out.residual_init = True

    def forward(self, x, attn_mask, positions=None, cache=None, store_kv=False, layer=0):
        B, L, D = x.shape
        h = self.attn_norm(x)
        q, k, v = (p(h).view(B, L, self.n_heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        q, k = rope(q, self.theta, positions), rope(k, self.theta, positions)
        if cache is not None and store_kv:  # append these keys/values to the cache and attend to all of it
            k, v = cache.update(k, v, layer)
        elif cache is not None and len(cache) > layer:  # attend to the cache without changing it
            k, v = torch.cat([cache[layer][0], k], 2), torch.cat([cache[layer][1], v], 2)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # bidirectional unless masked
        x = x + self.attn_out(a.transpose(1, 2).reshape(B, L, D))
        h = self.ff_norm(x)
        return x + self.ff_out(F.silu(self.ff_proj(h)) * self.up_proj(h))


class Backbone(nn.Module):
    def __init__(self, c):
        super().__init__()
        t = dict(wte=nn.Embedding(c.vocab_size, c.d_model), blocks=nn.ModuleList(Block(c) for _ in range(c.n_layers)))
        t.update(ln_f=RMSNorm(c.d_model), ff_out=nn.Linear(c.d_model, c.vocab_size, bias=False))
        self.transformer = nn.ModuleDict(t)


class TinyLLaDAModel(PreTrainedModel):
    config_class = TinyLLaDAConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["Block"]

    def __init__(self, config):
        super().__init__(config)
        self.model = Backbone(config)
        self.gradient_checkpointing = False
        self.post_init()

    def _init_weights(self, module):
        std = self.config.init_std
        if isinstance(module, nn.Linear):
            scale = math.sqrt(2 * self.config.n_layers) if getattr(module, "residual_init", False) else 1.0
            nn.init.normal_(module.weight, std=std / scale)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)

    def get_input_embeddings(self):
        return self.model.transformer["wte"]

    def forward(
        self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, store_kv=False, **kwargs
    ):
        """attention_mask (B, L), 0 on padding: a key-padding mask, so a left-padded row's outputs
        do not depend on its padding; or (B, 1, L, K) bool, True = may attend, used as given (the
        keys: a cache's, then these L). position_ids (B, L), default 0..L-1. past_key_values: a
        transformers Cache of earlier positions' keys and values, attended to; with store_kv these
        positions' are appended to it (SDAR's convention). Returns MaskedLMOutput, logits (B, L, V)."""
        t = self.model.transformer
        x = t["wte"](input_ids)
        if attention_mask is not None and attention_mask.dim() == 4:
            attn_mask = attention_mask.bool()
        else:  # (B, 1, 1, L), True = may attend. Pad queries still see real keys, so no NaN.
            attn_mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
            if self.config.block_size:  # block-causal: a position sees its own block and the blocks before it
                L = input_ids.shape[1]
                real = torch.ones_like(input_ids) if attention_mask is None else attention_mask.long()
                index = (real.cumsum(1) - 1) // self.config.block_size  # blocks from each row's first real token
                causal = (index[:, None, :] <= index[:, :, None])[:, None]
                attn_mask = causal if attn_mask is None else causal & attn_mask
                attn_mask = attn_mask | torch.eye(L, dtype=torch.bool, device=x.device)  # padding sees itself: no NaN
        for layer, block in enumerate(t["blocks"]):
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = self._gradient_checkpointing_func(block.__call__, x, attn_mask, position_ids)
            else:
                x = block(x, attn_mask, position_ids, past_key_values, store_kv, layer)
        return MaskedLMOutput(logits=t["ff_out"](t["ln_f"](x)))


class TinyShiftedConfig(TinyLLaDAConfig):
    """The same model read with a next-token head, as Dream reads its logits: position i - 1's logits
    predict token i (families.py declares the shift; the network itself is unchanged)."""

    model_type = "tiny_shifted"


class TinyShiftedModel(TinyLLaDAModel):
    config_class = TinyShiftedConfig


class TinyBlockConfig(TinyLLaDAConfig):
    """The same network with block-causal attention, as block-diffusion models (SDAR, TraDo) attend:
    a position sees its own block of `block_size` and every block before it, never a later one.
    Blocks are counted from each row's first real token, as SDAR's are."""

    model_type = "tiny_block"

    def __init__(self, block_size=8, **kwargs):
        super().__init__(block_size=block_size, **kwargs)


class TinyBlockModel(TinyLLaDAModel):
    config_class = TinyBlockConfig


for config_class, model_class in (
    (TinyLLaDAConfig, TinyLLaDAModel),
    (TinyShiftedConfig, TinyShiftedModel),
    (TinyBlockConfig, TinyBlockModel),
):
    config_class.register_for_auto_class()
    model_class.register_for_auto_class("AutoModel")
