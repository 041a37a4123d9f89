#!/usr/bin/env bash
# Every GPU measurement issue 7 asks for, in one command, for the device tool (one call, < 10 min):
#   run(command="bash bench/gpu.sh", timeout_s=600)
# Needs only torch and peft (the device image has both): the benches build a random
# LLaDA-8B-shaped model directly in bf16, no download. Tables go to stdout and to $OUT/gpu_*.txt.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, '| transformers', transformers.__version__, '| peft', peft.__version__)"

run() {  # run NAME CMD...: keep going if one fails, so one call yields every table it can
    local name=$1; shift
    echo "== $name: $*"
    "$@" > "$OUT/gpu_$name.txt" 2>&1; local rc=$?
    grep -v '^\s*$' "$OUT/gpu_$name.txt" | grep -v -i 'warn' | tail -12
    [ $rc -eq 0 ] || echo "!! $name exited with $rc"
}

# rollout: batch 8 x (128 prompt + 256 completion), block 32, 128 steps (target: >= 50% of the bf16 matmul rate)
run sample python3 bench/bench_sample.py --model llada8b --device cuda
# update, LoRA r=64 with gradient checkpointing (targets: >= 35% MFU, <= 40 GB)
run train_lora python3 bench/bench_train.py --model llada8b --device cuda --lora_rank 64 --checkpointing
# update, full fine-tuning, checkpointing (for comparison; no target)
run train_full python3 bench/bench_train.py --model llada8b --device cuda --checkpointing
# the embedded pipeline on CUDA with bf16 autocast: a short run must finish and log finite losses
# (train.py picks CUDA when it sees one)
run tiny_train python3 train.py --max_steps=20 --warm_start_steps=200 --eval_items=50 --out_dir=/tmp/tiny_cuda
cp /tmp/tiny_cuda/log.jsonl "$OUT/gpu_tiny_log.jsonl" 2>/dev/null
