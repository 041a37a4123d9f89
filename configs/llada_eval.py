# The released evaluation of LLaDA-8B-Instruct runs (its eval.yaml): 256 tokens in blocks of 32, 128 steps, greedy,
# low-confidence unmasking, 8 prompts per device. An eval.py preset, given after the run's training preset:
#   python eval.py configs/llada_gsm8k.py configs/llada_eval.py --models="('runs/llada_gsm8k',)"
max_completion_length = (256,)
block_length = 32
sampling_steps = (128,)
unmasking = "low_confidence"
per_device_eval_batch_size = 8
