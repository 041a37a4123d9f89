# LLaDA-8B-Instruct on gsm8k: torchrun --nproc_per_node 8 train.py configs/llada_gsm8k.py
exec(open(__file__.replace("llada_gsm8k.py", "_llada_common.py")).read())
task = "gsm8k"
output_dir = "runs/llada_gsm8k"
