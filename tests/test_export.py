"""export.py and the checkpoint folders: what train.py writes loads with Hugging Face and peft alone."""

import json
import os
import sys

import pytest
import torch
import warm
from test_train import ROOT, run

from plumbing import checkpoint, restore
from plumbing.logits import forward_logits
from plumbing.restore import resolve

# runs in a fresh interpreter, from another folder, without this project on its path
LOADER = """
import json, sys, torch
from transformers import AutoModel
from peft import PeftModel
a = json.loads(sys.argv[1])
ids = torch.tensor(a["ids"])
out = {}
with torch.no_grad():
    out["export"] = AutoModel.from_pretrained(a["export"], trust_remote_code=True)(ids).logits.tolist()
    if a["lora"]:
        base = AutoModel.from_pretrained(a["base"], trust_remote_code=True)
        out["checkpoint"] = PeftModel.from_pretrained(base, a["checkpoint"])(ids).logits.tolist()
    else:  # a full fine-tuning checkpoint folder is itself a model folder
        out["checkpoint"] = AutoModel.from_pretrained(a["checkpoint"], trust_remote_code=True)(ids).logits.tolist()
assert not any(n in sys.modules for n in ("model", "tiny_llada", "checkpoint", "data")), "project imported"
print(json.dumps(out))
"""


@pytest.mark.parametrize("lora_r", [0, 4])
def test_export_and_checkpoint_load_without_the_project(tmp_path, lora_r):
    run([f"--output_dir={tmp_path}/run", "--max_steps=2", "--save_steps=1", f"--lora_r={lora_r}", "--lora_alpha=8"])
    ckpt = checkpoint.newest(f"{tmp_path}/run")
    files = set(os.listdir(ckpt))
    assert {"trainer_state.json", "optimizer.pt", "tokenizer.json"} <= files
    weights = (
        {"adapter_config.json", "adapter_model.safetensors"}
        if lora_r
        else {"config.json", "model.safetensors", "tiny_llada.py"}
    )
    assert weights <= files
    out = warm.run(
        [sys.executable, "tools/export.py", f"{tmp_path}/run", f"{tmp_path}/export"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and "exported" in out.stdout, out.stderr[-2000:]
    assert resolve(f"{tmp_path}/export") == ("model", f"{tmp_path}/export")  # eval.py takes it as a model

    trained, _, _ = restore.load_trained(ckpt, merge_lora=False)  # the project's own model, unmerged
    ids = torch.randint(10, 100, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = forward_logits(trained, ids)
    args = dict(
        ids=ids.tolist(),
        export=f"{tmp_path}/export",
        checkpoint=ckpt,
        base=checkpoint.read(ckpt)["base"],
        lora=lora_r > 0,
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
    got = warm.run(
        [sys.executable, "-c", LOADER, json.dumps(args)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert got.returncode == 0, got.stderr[-2000:]
    logits = {k: torch.tensor(v) for k, v in json.loads(got.stdout).items()}
    torch.testing.assert_close(logits["checkpoint"], want, atol=1e-6, rtol=0)  # the adapters (or weights) as trained
    torch.testing.assert_close(logits["export"], want, atol=1e-5, rtol=0)  # merged in float32: rounding only


def test_export_refuses_a_model_and_an_existing_folder(tmp_path):
    os.makedirs(tmp_path / "there")
    for args, words in [
        (["tiny", f"{tmp_path}/x"], "is a model"),
        ([f"{tmp_path}/none", f"{tmp_path}/there"], "exists"),
    ]:
        out = warm.run([sys.executable, "tools/export.py", *args], cwd=ROOT, capture_output=True, text=True)
        assert out.returncode != 0 and words in out.stderr and "Traceback" not in out.stderr, out.stderr
