# Dream-v0-Instruct-7B on MATH: torchrun --nproc_per_node 8 train.py configs/dream_math.py
exec(open(__file__.replace("dream_math.py", "_dream_common.py")).read())
task = "math"
output_dir = "runs/dream_math"
