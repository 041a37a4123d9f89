"""The system turns of the LLaDA runs, one per task (data.TASKS, `system_prompt = "task"`).

Written to the specification of the paper's released prompts: reasoning in <think> tags, the answer
in <answer> tags in the form each reward reads (math: \\boxed{}; Countdown: "expression = target",
with an example; Sudoku: the 16 digits, with two worked examples). The embedded model runs without a
system turn: its prompts are compact. `system_prompt_file` runs any other exact text.
"""

MATH_PROMPT = r"""Solve the math problem below. Reason step by step inside <think> </think> tags.
Then write the final answer inside <answer> </answer> tags, as a single number or expression wrapped in \boxed{}:
<think>
your reasoning
</think>
<answer>
\boxed{the final answer}
</answer>
"""

COUNTDOWN_PROMPT = """You are given a list of numbers and a target.
Combine every number exactly once with +, -, * and / (parentheses allowed) so that the result equals the target.
Try combinations systematically inside <think> </think> tags.
Then write the equation inside <answer> </answer> tags in the form "expression = target":
<think>
your reasoning
</think>
<answer>
expression = target
</answer>
For example, with the numbers [4, 11, 6] and the target 50, a correct answer is:
<answer>
11 * 4 + 6 = 50
</answer>
"""

SUDOKU_PROMPT = """You are given a 4x4 Sudoku as a string of 16 digits, row by row from the top left, with 0 for an empty cell.
Fill every empty cell with a digit from 1 to 4 so that each row, each column and each of the four 2x2 boxes holds 1, 2, 3 and 4 once.
Work through the cells inside <think> </think> tags.
Then write the solved grid inside <answer> </answer> tags as 16 digits with nothing else:
<think>
your reasoning
</think>
<answer>
the 16 digits of the solved grid
</answer>

Two worked examples.

Puzzle: 1204400100102000
<think>
Rows: 1204 / 4001 / 0010 / 2000
Row 1, column 3: its row, column and box already hold 124, so 3.
Row 2, column 2: its row, column and box already hold 124, so 3.
Row 2, column 3: its row, column and box already hold 134, so 2.
Row 3, column 1: its row, column and box already hold 124, so 3.
Row 3, column 2: its row, column and box already hold 123, so 4.
Row 3, column 4: its row, column and box already hold 134, so 2.
Row 4, column 2: its row, column and box already hold 234, so 1.
Row 4, column 3: its row, column and box already hold 123, so 4.
Row 4, column 4: its row, column and box already hold 124, so 3.
Grid: 1234 / 4321 / 3412 / 2143
</think>
<answer>
1234432134122143
</answer>

Puzzle: 1430020401000040
<think>
Rows: 1430 / 0204 / 0100 / 0040
Row 1, column 4: its row, column and box already hold 134, so 2.
Row 2, column 1: its row, column and box already hold 124, so 3.
Row 2, column 3: its row, column and box already hold 234, so 1.
Row 3, column 3: its row, column and box already hold 134, so 2.
Row 3, column 1: its row, column and box already hold 123, so 4.
Row 3, column 4: its row, column and box already hold 124, so 3.
Row 4, column 1: its row, column and box already hold 134, so 2.
Row 4, column 2: its row, column and box already hold 124, so 3.
Row 4, column 4: its row, column and box already hold 234, so 1.
Grid: 1432 / 3214 / 4123 / 2341
</think>
<answer>
1432321441232341
</answer>
"""
