# The embedded pipeline on a block-diffusion model: the shipped block base (blocks of 8), generated Countdown.
# Its rollouts keep a KV cache of finished blocks, its stepwise draws run packed (ALGORITHM.md §6).
model_name_or_path = "models/tiny-countdown-block"
task = "countdown"
output_dir = "runs/tiny_countdown_block"
