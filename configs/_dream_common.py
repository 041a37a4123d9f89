# Dream-v0-Instruct-7B with the paper's released RL settings where the concept is the same (configs/_llada_common.py),
# and Dream's own decoding: the whole completion as one block, one token a step, T = 0.2, top-p 0.95 (its generation
# defaults); its "entropy" ordering is not one of ours, so the most confident position goes first (low_confidence).
exec(open(__file__.rsplit("/", 1)[0] + "/_llada_common.py").read())  # __file__: the preset that runs this
model_name_or_path = "Dream-org/Dream-v0-Instruct-7B"
max_completion_length = 256
block_length = 256
sampling_steps = 256
unmasking = "low_confidence"
temperature = 0.2
top_k = 0
top_p = 0.95
