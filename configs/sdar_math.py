# SDAR-8B-Chat on MATH: torchrun --nproc_per_node 8 train.py configs/sdar_math.py
exec(open(__file__.replace("sdar_math.py", "_sdar_common.py")).read())
task = "math"
output_dir = "runs/sdar_math"
