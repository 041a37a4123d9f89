# Dream-v0-Instruct-7B on gsm8k: torchrun --nproc_per_node 8 train.py configs/dream_gsm8k.py
exec(open(__file__.replace("dream_gsm8k.py", "_dream_common.py")).read())
task = "gsm8k"
output_dir = "runs/dream_gsm8k"
