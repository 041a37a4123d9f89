# LLaDA-8B-Instruct with the paper's released configuration, shared by the llada_*.py presets.
# 8 GPUs x 8 completions per device x 2 accumulation steps = 16 prompts of 8 completions per step.
model_name_or_path = "GSAI-ML/LLaDA-8B-Instruct"
system_prompt = "task"  # each task's own system turn (SYSTEM_PROMPT of tasks/<task>.py)
compact_prompt = False
seed = 333
lora_r = 64
lora_alpha = 64
gradient_checkpointing = False
learning_rate = 5e-6  # AdamW β = (0.9, 0.99), weight decay 0.01, 1% warmup, cosine: train.py's own, as released
max_grad_norm = 1.0
max_steps = -1
num_train_epochs = 5.0
num_generations = 8
per_device_train_batch_size = 8
gradient_accumulation_steps = 2
num_iterations = 1
epsilon = 0.2
epsilon_high = 0.2
beta = 0.0
estimator = "stepwise"
mc_samples = 24
scheme = "entropy"  # low-discrepancy draws with entropy importance sampling
max_completion_length = 384
block_length = 12
sampling_steps = 128
unmasking = "random"
temperature = 0.6
top_p = 0.99
top_k = 150
eval_items = -1  # the whole test set (GSM8K-Platinum: 1,209 items; MATH-500: 500); eval.py scores it as released
# (configs/llada_eval.py); train.py's held-out accuracy decodes as the rollouts do (384 tokens, blocks of 12)
save_steps = 15
save_total_limit = 100
