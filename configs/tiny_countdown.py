# The embedded default (what `python train.py` runs): tiny model, generated Countdown, CPU-sized.
model_name = "tiny"
task = "countdown"
out_dir = "runs/tiny_countdown"
