# LLaDA-8B-Instruct on math: torchrun --nproc_per_node 8 train.py configs/llada_math.py
exec(open(__file__.replace("llada_math.py", "_llada_common.py")).read())
task = "math"
output_dir = "runs/llada_math"
