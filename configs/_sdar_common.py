# SDAR-8B-Chat (block diffusion, blocks of 4) with the paper's released RL settings where the concept is the same
# (configs/_llada_common.py), and the decoding dLLM-RL's released SDAR/TraDo runs roll out and evaluate with
# (rl_sdar.yaml, sdar_eval.yaml): blocks of 4 counted from the first token, dynamic threshold 0.9 (every masked
# position at least 0.9 confident, at least one a step: 4 denoising steps a block), T = 1.0, no top-k/top-p.
# TraDo-4B/8B-Instruct (Gen-Verse/TraDo-8B-Instruct) are the same family.
exec(open(__file__.rsplit("/", 1)[0] + "/_llada_common.py").read())  # __file__: the preset that runs this
model_name_or_path = "JetLM/SDAR-8B-Chat"  # its config names no block size: 4, families.py's default for SDAR
block_length = 4
max_completion_length = 384
sampling_steps = 384  # threshold decoding's most steps: 4 a block, so at least one position a step
unmasking = "threshold"
threshold = 0.9
temperature = 1.0
top_k = 0
top_p = 1.0
# the exact stepwise sum in one packed forward a micro-batch: P + G + m' x 4 positions a completion (ALGORITHM.md §6)
scheme = "exact"
