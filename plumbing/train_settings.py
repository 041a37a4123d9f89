"""What train.py's keys may be together: every impossible combination refused before any heavy work, in one
line naming the key and the fix. Only what needs the model itself (a hub model's block size) waits until it
loads; the sampler's own settings are checked by the sampler (sample.check_settings, which train.py runs)."""

import os

from plumbing import data
from plumbing.errors import ConfigError, config_errors
from plumbing.families import check_blocks
from plumbing.model_names import declared_block_size, model_path_error


def check(cfg, argv, default_threshold):
    """Refuse cfg's first impossible combination. argv: the command line, where a --threshold without threshold
    unmasking is refused even at its default value (default_threshold: train.py's)."""
    with config_errors():
        data.check_task_options(cfg.task, vars(cfg))
        check_blocks(None, cfg.block_length, declared_block_size(cfg.model_name_or_path))
    given = any(a.startswith("--threshold=") for a in argv)
    if cfg.unmasking != "threshold" and (given or cfg.threshold != default_threshold):
        raise ConfigError(
            f"--threshold={cfg.threshold} is read only by --unmasking=threshold (here {cfg.unmasking!r}): "
            "add --unmasking=threshold, or leave --threshold out"
        )
    if not 1 <= cfg.mc_samples <= cfg.sampling_steps:
        raise ConfigError(
            f"--mc_samples={cfg.mc_samples} must be between 1 and {cfg.sampling_steps}, the most steps a rollout takes"
        )
    if not all(isinstance(name, str) and name for name in cfg.lora_target_modules):
        raise ConfigError(f"--lora_target_modules={cfg.lora_target_modules!r} must be a tuple of module names")
    if (batch := cfg.per_device_train_batch_size) % cfg.num_generations:
        raise ConfigError(
            f"--per_device_train_batch_size={batch} must be a multiple of --num_generations={cfg.num_generations}"
        )
    if isinstance(path := cfg.resume_from_checkpoint, str) and not os.path.isfile(f"{path}/trainer_state.json"):
        raise ConfigError(f"--resume_from_checkpoint={path} is not a checkpoint folder (no trainer_state.json)")
    for key in ("train_file", "eval_file", "system_prompt"):
        path = getattr(cfg, key)
        if (key != "system_prompt" or path.endswith(".txt")) and path not in ("", "hub") and not os.path.exists(path):
            raise ConfigError(f"--{key}={path} does not exist")
    if problem := model_path_error(cfg.model_name_or_path):
        raise ConfigError(f"--model_name_or_path: {problem}")
