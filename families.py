"""Model families, each declared once: which configs are the family, where its transformer blocks and
final norm are, which position's logits predict a token, its [MASK] id, and the modules LoRA adapts.
A model of any other family stops at load with one line naming these.
"""

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Family:
    """What the code must know of a model family, declared once: which configs are it, where its
    transformer blocks and the norm before the vocabulary head are (logits = head(final_norm(x))),
    which position's logits predict a token, its [MASK] id, and the modules LoRA adapts."""

    model_types: tuple  # config.model_type values of this family
    layers: str  # attribute path to the module holding the blocks and the final norm
    blocks: str
    final_norm: str
    lora_targets: tuple  # module-name suffixes; peft's suffix match also adapts LLaDA's head "ff_out", as released
    shift: int = 0  # token i is predicted by position i - shift (0: LLaDA, masked LM; 1: Dream, next-token head)
    mask_id: int | None = None  # [MASK] when neither the tokenizer nor the config names one
    block_size: str = ""  # block-causal attention: the config field holding the block size ("" = bidirectional)


LLADA_LORA = ("q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out")
DREAM_LORA = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
FAMILIES = {  # LLaDA-8B-Instruct and 1.5; the embedded model (tiny_llada.py) in both conventions
    "llada": Family(("llada", "tiny_llada"), "model.transformer", "blocks", "ln_f", LLADA_LORA, mask_id=126336),
    "tiny_shifted": Family(("tiny_shifted",), "model.transformer", "blocks", "ln_f", LLADA_LORA, shift=1),
    "tiny_block": Family(("tiny_block",), "model.transformer", "blocks", "ln_f", LLADA_LORA, block_size="block_size"),
    # Dream-v0-Instruct-7B: a Qwen2.5 body; its head predicts the next position, as in its generate()
    "dream": Family(("Dream",), "model", "layers", "norm", DREAM_LORA, shift=1, mask_id=151666),
}


def family_of(model):
    """The Family of a model, from its config's model_type; any other stops with one line."""
    model_type = getattr(getattr(unwrap(model), "config", None), "model_type", None)
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    supported = ", ".join(f"{name} ({', '.join(f.model_types)})" for name, f in FAMILIES.items())
    raise ValueError(
        f"{type(unwrap(model)).__name__} (model_type {model_type!r}) is not a model family this code knows; "
        f"supported: {supported}"
    )


def block_size(model):
    """The block size of a block-causal model (its blocks are the sampler's blocks), or 0."""
    field = family_of(model).block_size
    return int(getattr(unwrap(model).config, field)) if field else 0


def family_part(model, part):
    """A module of the family's layout: part "blocks" (the block list) or "final_norm"."""
    family, layers = family_of(model), unwrap(model)
    for attribute in family.layers.split("."):
        layers = getattr(layers, attribute)
    name = getattr(family, part)
    return layers[name] if isinstance(layers, torch.nn.ModuleDict) else getattr(layers, name)


def unwrap(model):
    """The bare model under DDP and/or peft wrappers."""
    model = getattr(model, "module", model)  # DDP
    if hasattr(model, "get_base_model"):  # peft
        model = model.get_base_model()
    return model
