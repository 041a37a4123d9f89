"""Before any GPU measurement: can this python run what bench/gpu.sh runs? Imports every module its
scripts import (read from their source: the benches do their work at import), then loads the shipped
tiny model through its own remote code with LoRA adapters (peft, and through it accelerate) and runs
one forward, so the libraries transformers and peft import lazily are imported too. A missing one ends
it in one line naming the module; else one line of versions.

    python bench/gpu_check.py
"""

import ast
import importlib
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "bench")]
SCRIPTS = ("train.py", "bench/bench_sample.py", "bench/bench_train.py", "bench/bench_blocks.py", "bench/memory.py")


def imported_modules(script):
    """The modules a script imports anywhere in its source (its functions' own imports too)."""
    tree = ast.parse(open(os.path.join(ROOT, script)).read())
    found = [a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names]
    return found + [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 0]


def main():
    try:
        for name in sorted({module for script in SCRIPTS for module in imported_modules(script)}):
            importlib.import_module(name)
        import peft
        import torch
        import transformers

        from plumbing.model import add_lora, load

        model, tok = load(os.path.join(ROOT, "models", "tiny-countdown"))
        model = add_lora(model, 4, 4)
        with torch.no_grad():
            model(torch.tensor([tok("1 + 2").input_ids])).logits.sum().item()
    except ImportError as e:  # ModuleNotFoundError included
        why = f"gpu_check: this python cannot run the GPU benches: {e} (bench/gpu.sh installs .whl/)"
        raise SystemExit(why) from None
    versions = f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}"
    print(f"gpu_check: ok ({versions})")


if __name__ == "__main__":
    main()
