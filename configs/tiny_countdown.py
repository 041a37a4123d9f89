# The embedded default (what `python train.py` runs): tiny model, generated Countdown, CPU-sized.
model_name_or_path = "tiny"
task = "countdown"
output_dir = "runs/tiny_countdown"
