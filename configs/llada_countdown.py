# LLaDA-8B-Instruct on countdown: torchrun --nproc_per_node 8 train.py configs/llada_countdown.py
exec(open(__file__.replace("llada_countdown.py", "_llada_common.py")).read())
task = "countdown"
output_dir = "runs/llada_countdown"
num_range = (1, 100)
target_range = (1, 1000)
