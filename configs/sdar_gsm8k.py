# SDAR-8B-Chat on gsm8k: torchrun --nproc_per_node 8 train.py configs/sdar_gsm8k.py
exec(open(__file__.replace("sdar_gsm8k.py", "_sdar_common.py")).read())
task = "gsm8k"
output_dir = "runs/sdar_gsm8k"
