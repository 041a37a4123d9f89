"""Export a trained run as a standalone Hugging Face model folder: the policy AGRPO trained, with
its LoRA adapters merged into the weights in float32 and the result cast to the base model's
dtype, the tokenizer, and the modeling code (LLaDA's remote-code files and `auto_map`, or the
embedded model's tiny_llada.py). Nothing of this project is needed to load it:

    python tools/export.py runs/tiny_countdown runs/tiny_countdown_export  # a run: its newest checkpoint
    python tools/export.py runs/llada_gsm8k/checkpoint-300 exports/llada_gsm8k  # one checkpoint
    python tools/export.py RUN OUT --base_model=PATH  # the base named by you (a local base's own code runs only then)

    AutoModel.from_pretrained("exports/llada_gsm8k", trust_remote_code=True)

eval.py takes the exported folder like any model folder. The adapters alone stay in the checkpoint
folder: PeftModel.from_pretrained(base, "runs/llada_gsm8k/checkpoint-300").
"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as tools/*.py

from plumbing import checkpoint, outdir, restore  # noqa: E402
from plumbing.errors import ConfigError  # noqa: E402
from plumbing.families import unwrap  # noqa: E402
from plumbing.model import merge_lora_float32, save, shipped  # noqa: E402


def export(source, out_dir, base=None):
    """Write the trained model of `source` (a run folder or a checkpoint folder) to out_dir, a new folder
    (outdir.claim: checked, with room for the weights, before any model loads; written whole or not at all).
    base: the base model as the user names it (default: the one the checkpoint names)."""
    outdir.claim(out_dir, "the export", None, whole=True)
    restore.check_base(base)
    kind, path = restore.resolve(source)
    if kind != "checkpoint":
        raise ConfigError(f"{source} is a model, not a training run or checkpoint: it needs no export")
    named = base or checkpoint.read(path)["base"]  # the export is the base's size, or the checkpoint's weights'
    room = max(outdir.weights_bytes(path), outdir.weights_bytes(shipped(named)))
    outdir.claim(out_dir, "the export", None, whole=True, need_bytes=room)
    model, tok, cfg = restore.load_trained(path, merge_lora=False, base=base)
    dtype = next(unwrap(model).parameters()).dtype  # the base model's own: bf16 for LLaDA
    if cfg.get("lora_r", 0) > 0:  # load_trained read the run the same way: no lora_r is full fine-tuning
        model = merge_lora_float32(model)
    model = model.to(dtype)
    model.requires_grad_(False)
    save(model, tok, out_dir)  # a full disk or an unwritable place: one line, nothing left behind
    return path, dtype


def main(argv):
    bases = [a.removeprefix("--base_model=") for a in argv if a.startswith("--base_model=")]
    argv = [a for a in argv if not a.startswith("--base_model=")]
    if len(argv) != 2 or argv[0] in ("-h", "--help") or len(bases) > 1:
        print(__doc__)
        raise SystemExit(0 if argv[:1] in (["-h"], ["--help"]) else 2)
    source, out_dir = argv
    with torch.no_grad():
        path, dtype = export(source, out_dir, bases[0] if bases else None)
    print(f"exported {path} ({str(dtype).removeprefix('torch.')}) to {out_dir}")


if __name__ == "__main__":
    main(sys.argv[1:])
