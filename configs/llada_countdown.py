# LLaDA-8B-Instruct on countdown: torchrun --nproc_per_node 8 train.py configs/llada_countdown.py
# The released run's data: 3-number items of Jiayi-Pan/Countdown-Tasks-3to4 (targets up to 100).
# Its own 3-number test file (SPG's, 256 items) loads as --eval_file=path/to/countdown_cd3_test.jsonl.
exec(open(__file__.replace("llada_countdown.py", "_llada_common.py")).read())
task = "countdown"
train_file = "hub"
eval_file = "hub"
output_dir = "runs/llada_countdown"
