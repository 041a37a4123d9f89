#!/usr/bin/env bash
# The GPU measurements, on one CUDA GPU with 80 GB (an H100), each part under 10 minutes:
#   bash bench/gpu.sh eager     # rollout and update against their targets, profiles, LoRA input cast, tiny train.py
#   bash bench/gpu.sh fsdp      # tiny train.py under --fsdp on every GPU; the memory model, measured at 4 layers
#   bash bench/gpu.sh compile   # the same benches with torch.compile'd layers
#   bash bench/gpu.sh wheels    # (where pip reaches PyPI) bench/gpu_wheels.txt as Python 3.12 wheels in .whl/:
#                               # transformers and peft as pinned, and all they import that torch does not bring
# A GPU image with another transformers (5.x cannot load LLaDA's remote code): when .whl/ holds wheels, every part
# installs them into /tmp/site and puts it in front of the image's packages. .whl/ is git-ignored: carry it to the
# GPU machine with the working tree. Every part first runs bench/gpu_check.py (imports and one forward of the tiny
# model with LoRA) and stops in one line if a library is missing.
# The benches build a random LLaDA-8B-shaped model directly in bf16 (no download). Tables go to
# stdout and to $OUT/gpu_*.txt (default /tmp/gpu_out; the profiles are in those files, after the tables).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_out}
part=${1:-eager}
if [ "$part" = wheels ]; then
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
        -r bench/gpu_wheels.txt
    exit
fi
if ls .whl/*.whl > /dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
git log -1 --format='commit %h %s' 2>/dev/null
python3 bench/gpu_check.py || exit 1

run() {  # run NAME CMD...: keep going if one fails, so one call yields every table it can
    local name=$1; shift
    echo "== $name: $*"
    local t0=$SECONDS
    "$@" > "$OUT/gpu_$name.txt" 2>&1; local rc=$?
    tr '\r' '\n' < "$OUT/gpu_$name.txt" | grep -E '^(#|\||speed-up|rows|identical|held-out|cached rollout|exact sum|measured)' | grep -v '^# matmul' | tail -24
    [ $rc -eq 0 ] || { echo "!! $name exited with $rc:"; grep -v '^\s*$' "$OUT/gpu_$name.txt" | tail -4; }
    echo "   ($((SECONDS - t0)) s)"
}

sample="python3 bench/bench_sample.py --model_shape=llada8b --device=cuda"
train="python3 bench/bench_train.py --model_shape=llada8b --device=cuda"
tiny="python3 train.py --max_steps=20 --eval_items=50 --overwrite_output_dir"  # the shipped tiny base; train.py picks CUDA when it sees one
case $part in
eager)
    # rollout, batch 8 x (128 prompt + 256 completion), block 32, 128 steps (target: >= 50% of the bf16 matmul rate),
    # with threshold-decoding rows (tau 0.5, 0.7, 0.9; a random model's low confidences make them its slowest case)
    run sample $sample --profile
    # fixed steps against threshold decoding on the shipped tiny base: passes, speed, accuracy
    run sample_tiny python3 bench/bench_sample.py --model_shape=tiny --device=cuda
    # update, LoRA r=64, gradient checkpointing (targets: >= 35% MFU, <= 40 GB)
    run train_lora $train --lora_r=64 --gradient_checkpointing --profile
    # the same with peft's float32 copy of every adapter input (model.add_lora): what skipping it saves
    run train_lora_cast $train --lora_r=64 --gradient_checkpointing --peft_input_cast
    # full fine-tuning, checkpointing (no target)
    run train_full $train --gradient_checkpointing
    # block-causal LLaDA-8B shape, 384 tokens in blocks of 12, 128 steps: cached rollout against recomputing
    # (target: >= 10x fewer positions), exact packed sum against k = 2 / 24 draws (target: <= 5 full passes)
    run blocks python3 bench/bench_blocks.py --model_shape=llada8b --device=cuda --lora_r=64 --gradient_checkpointing \
        --recompute_in_full=False
    # the embedded pipeline on CUDA (bf16 autocast): must finish and log finite losses
    run tiny_train $tiny --output_dir=/tmp/tiny_cuda
    run tiny_train_threshold $tiny --unmasking=threshold --output_dir=/tmp/tiny_cuda_threshold
    cp /tmp/tiny_cuda/log.jsonl "$OUT/gpu_tiny_log.jsonl" 2>/dev/null && tail -1 /tmp/tiny_cuda/log.jsonl | cut -c1-160
    ;;
fsdp)
    # train.py under --fsdp on every GPU here (NCCL, bf16 compute over float32 master weights): must finish like
    # tiny_train; then the memory model at 8B on 8 GPUs, and the model against CUDA's peaks for FSDP full
    # fine-tuning of a 4-block LLaDA-8B shape on one GPU
    run tiny_train_fsdp python3 -m torch.distributed.run --standalone --nproc_per_node "$(nvidia-smi -L | wc -l)" \
        train.py --max_steps=20 --eval_items=50 --overwrite_output_dir --fsdp --output_dir=/tmp/tiny_cuda_fsdp
    run memory python3 bench/memory.py
    run memory_measured python3 -m torch.distributed.run --standalone --nproc_per_node 1 bench/memory.py --gpus=1 \
        --n_layers=4 --measure
    ;;
compile)
    run sample_compile $sample --compile
    run train_lora_compile $train --lora_r=64 --gradient_checkpointing --compile
    run tiny_train_compile $tiny --compile --output_dir=/tmp/tiny_cuda_compile
    ;;
*)
    echo "usage: bash bench/gpu.sh eager|fsdp|compile|wheels"; exit 2 ;;
esac
