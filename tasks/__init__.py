"""The tasks, one file each: `--task=NAME` runs tasks/NAME.py (`_template.py`, a minimal working one, is the file
to copy for a new task; a name starting with "_" is not a task). A task file defines

    SYSTEM_PROMPT                 its own system turn (`system_prompt = "task"`)
    question(item, compact)       the user turn's text of an item
    parse_row(where, row)         an item from a row of a local file, or data.DataError naming `where`
    answer(item)                  what reward and accuracy compare a completion against
    reward, accuracy              (completion, answer) -> float: r(o) of the group-relative advantage
                                  (a function in rewards.py) and the reported accuracy in [0, 1]
    problem_key(item)             what makes two items the same problem (test problems never train)
    REWARD_RANGE                  (lo, hi): the reward of any completion against any reference lies in it
    EXAMPLE_ROW                   a row of a local data file, as parse_row reads it

and, where it has them, `load_hub(split)` (the released run's data, through `datasets`),
`generate(n, seed, split, unique, **options)` (procedural items; split as data.split_of),
`check_options(**options)` (a ValueError naming the first option out of range) and `solution(item)`
(the completion the embedded base model's SFT reads). A generator's options are the assignments between
the comment lines `# --- config` and `# --- end of config` of the task file, one `name = default  # meaning` a
line (tasks/countdown.py): train.py, eval.py and tools/sft.py take them as --key=value like their own keys and
list them in --help. A number's range ends its comment ("[1, 6]", tasks/_template.py), checked as the scripts'
RANGES are. An assignment outside those two lines is not a key.

The tests read every file here, the template too: each reward stays in its REWARD_RANGE on hostile strings
against EXAMPLE_ROW's answer and malformed ones, and a task's `solution` scores the top of it, so a new task is
tested with no test edited.
"""
