# The embedded default (what `python train.py` runs): the shipped tiny base model, generated Countdown, CPU-sized.
model_name_or_path = "models/tiny-countdown"
task = "countdown"
output_dir = "runs/tiny_countdown"
