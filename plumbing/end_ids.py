"""The token ids that end a completion, as a model declares them: its config's eos_token_id, its
generation_config.json's, else its tokenizer's."""

import json
import os

from plumbing.errors import first_line


def end_ids(config_eos, generation_eos, tok):
    """The ids that end a completion: every end-of-turn id the model declares, its config's eos_token_id and its
    generation_config.json's (each an int or a list; SDAR and TraDo: <|endoftext|> in the config, <|im_end|> and
    <|endoftext|> in generation_config.json, on which their generate.py stops), the config's first; the
    tokenizer's eos only where neither names one (LLaDA's tokenizer names <|eot_id|>, which closes a turn and is
    content in the paper's released run, which ends a completion at the config's <|endoftext|>)."""
    declared = [e for ids in (config_eos, generation_eos) for e in (ids if isinstance(ids, (list, tuple)) else [ids])]
    ids = [e for e in declared if isinstance(e, int) and not isinstance(e, bool) and 0 <= e < len(tok)]
    return tuple(dict.fromkeys(ids)) or (tok.eos_token_id,)


def generation_config_eos(name_or_path):
    """The eos_token_id of a model's generation_config.json (the ids its own generation stops on), None
    without the file; a damaged file stops the load, naming it."""
    import transformers

    if not os.path.isdir(name_or_path):
        try:
            return transformers.GenerationConfig.from_pretrained(name_or_path).eos_token_id
        except OSError:  # a hub model without the file
            return None
    path = os.path.join(name_or_path, "generation_config.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            fields = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: {first_line(e)}") from None
    if not isinstance(fields, dict):
        raise ValueError(f"{path} is not a JSON object")
    return fields.get("eos_token_id")
