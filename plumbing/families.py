"""Model families, each declared once: which configs are the family, where its transformer layers and
final norm are, which position's logits predict a token, its [MASK] id, the modules LoRA adapts and,
for block-diffusion models, the block size. A model of any other family stops at load with one line
naming these.
"""

import inspect
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Family:
    """What the code must know of a model family, declared once: which configs are it, where its
    transformer layers and the norm before the vocabulary head are (logits = head(final_norm(x))),
    which position's logits predict a token, its [MASK] id, and the modules LoRA adapts."""

    model_types: tuple  # config.model_type values of this family
    body: str  # attribute path to the module holding the transformer layers and the final norm
    layers: str  # the body's attribute that lists the transformer layers (LLaDA calls them "blocks")
    final_norm: str
    lora_targets: tuple  # module-name suffixes; peft's suffix match also adapts LLaDA's head "ff_out", as released
    shift: int = 0  # token i is predicted by position i - shift (0: LLaDA, masked LM; 1: Dream, next-token head)
    mask_id: int | None = None  # [MASK] when neither the tokenizer nor the config names one
    block_size: int = 0  # block-causal attention in blocks of this size (0: bidirectional); a config's block_size wins
    auto_class: str = "AutoModel"  # the transformers Auto class whose remote code class returns logits


LLADA_LORA = ("q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out")
DREAM_LORA = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
FAMILIES = {  # LLaDA-8B-Instruct and 1.5; the embedded model (tiny_llada.py) in both conventions
    "llada": Family(("llada", "tiny_llada"), "model.transformer", "blocks", "ln_f", LLADA_LORA, mask_id=126336),
    "tiny_shifted": Family(("tiny_shifted",), "model.transformer", "blocks", "ln_f", LLADA_LORA, shift=1),
    "tiny_block": Family(("tiny_block",), "model.transformer", "blocks", "ln_f", LLADA_LORA, block_size=8),
    # Dream-v0-Instruct-7B: a Qwen2.5 body; its head predicts the next position, as in its generate()
    "dream": Family(("Dream",), "model", "layers", "norm", DREAM_LORA, shift=1, mask_id=151666),
    # SDAR and TraDo (Qwen3 bodies): block-causal, blocks of 4 as trained and run by TraceRL; position i
    # predicts token i. Their configs name no block size: add "block_size" to config.json for another.
    "sdar": Family(
        ("sdar",),
        "model",
        "layers",
        "norm",
        DREAM_LORA,
        mask_id=151669,
        block_size=4,
        auto_class="AutoModelForCausalLM",
    ),
}


# The released checkpoints of each family: a hub id whose code may run when a checkpoint names it as its base
# (any other hub id runs only when the user names it: a checkpoint file is not the user)
OFFICIAL_HUB_IDS = (
    "GSAI-ML/LLaDA-8B-Instruct",
    "GSAI-ML/LLaDA-8B-Base",
    "GSAI-ML/LLaDA-1.5",
    "Dream-org/Dream-v0-Instruct-7B",
    "Dream-org/Dream-v0-Base-7B",
    "JetLM/SDAR-1.7B-Chat",
    "JetLM/SDAR-4B-Chat",
    "JetLM/SDAR-8B-Chat",
    "Gen-Verse/TraDo-4B-Instruct",
    "Gen-Verse/TraDo-8B-Instruct",
)


def family_of(model):
    """The Family of a model, from its config's model_type; any other stops with one line."""
    return family_of_config(getattr(unwrap(model), "config", None), type(unwrap(model)).__name__)


def family_of_config(config, name=None):
    """The Family of a model config (before its weights load); any other stops with one line."""
    model_type = getattr(config, "model_type", None)
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    supported = ", ".join(f"{name} ({', '.join(f.model_types)})" for name, f in FAMILIES.items())
    raise ValueError(
        f"{name or 'a model'} (model_type {model_type!r}) is not a model family this code knows; supported: {supported}"
    )


def block_size(model):
    """The block size b of a block-causal model (its blocks are the sampler's blocks), or 0."""
    family_of(model)  # an unknown family stops with the model's class named
    return config_block_size(unwrap(model).config)


def config_block_size(config):
    """block_size of a model config, read before its weights load: the config's own, else its family's, 0 for a
    bidirectional model."""
    size = family_of_config(config).block_size
    return int(getattr(config, "block_size", None) or size) if size else 0


def check_blocks(model, block_length, size=None):
    """A block-causal model decodes in its own blocks: raise ValueError for any other block length. size: the
    model's block size when `model` is None (read from its config before it loads)."""
    if (size := block_size(model) if model is not None else size) and block_length != size:
        raise ValueError(
            f"block_length={block_length} must be the model's block size {size}: it attends by blocks (a model "
            "trained with other blocks whose config names none: add its block_size to config.json)"
        )


def family_part(model, part):
    """A module of the family's layout: part "layers" (the transformer layers' list) or "final_norm"."""
    family, body = family_of(model), unwrap(model)
    for attribute in family.body.split("."):
        body = getattr(body, attribute)
    name = getattr(family, part)
    return body[name] if isinstance(body, torch.nn.ModuleDict) else getattr(body, name)


def unwrap(model):
    """The bare model under DDP and/or peft wrappers."""
    model = getattr(model, "module", model)  # DDP
    if hasattr(model, "get_base_model"):  # peft
        model = model.get_base_model()
    return model


def save_pretrained(model, folder, **kw):
    """model.save_pretrained(folder), where a family's own code predates the transformers release: Dream's
    DreamGenerationConfig (Fast-dLLM's and dLLM-RL's copies) has validate(self, is_init=False), and
    transformers 4.57 saves a generation config after validate(strict=True)."""
    config = getattr(model, "generation_config", None)
    validate = getattr(type(config), "validate", None)
    if validate is None or "strict" in inspect.signature(validate).parameters:
        return model.save_pretrained(folder, **kw)
    own = type(config)
    config.__class__ = type(own.__name__, (own,), {"validate": lambda self, strict=False, **k: validate(self, **k)})
    try:
        return model.save_pretrained(folder, **kw)
    finally:
        config.__class__ = own


def native_departures(model, unmasking="low_confidence", temperature=0.0, top_k=None, top_p=None, **_):
    """One line for each way the sampler's settings decode otherwise than the model's own code (README,
    "Dream and SDAR"): a start-up warning, so no run departs from its model's decoding unsaid."""
    types, lines = family_of(model).model_types, []
    truncated = temperature > 0 and bool(top_k or (top_p is not None and top_p < 1))
    ranked = unmasking != "random" and (truncated or temperature not in (0, 1))
    if "Dream" in types:
        lines.append(
            "Dream's diffusion_generate schedules its steps by timesteps (with steps = G: 0 tokens at the first step, "
            "2 at the last); this sampler commits c_i = floor(b/s) + [i < b mod s] a step, in blocks"
        )
        if ranked:
            lines.append(
                "Dream's maskgit_plus ranks by the tempered, top-p truncated probability; this by the untempered"
            )
    if "sdar" in types and ranked:
        lines.append(
            "SDAR's generate ranks by the sampled token's tempered, truncated probability; this by the untempered"
        )
    return lines
