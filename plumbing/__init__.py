"""The plumbing under the algorithm: loading models and their families, logits, the embedded model,
data, checkpoints, configuration, the optimizer, processes (DDP, FSDP) and logs."""
