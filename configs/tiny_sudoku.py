# The embedded model on generated 4x4 Sudoku: python train.py configs/tiny_sudoku.py
# The answer "<answer>" + 16 digits + "</answer>" + EOS is 19 tokens, so completions are 24 long
# (3 blocks of 8); m = L/4 steps as the Countdown default. Accuracy is cell accuracy.
# 10 blanks: with 6, the warm start alone already filled ~99% of cells in rollouts (measured), and
# groups of equal rewards leave AGRPO nothing to learn from.
model_name = "tiny"
task = "sudoku"
sudoku_blanks = 10
gen_length = 24
steps = 6
eval_gen_length = 24
eval_steps = 6
out_dir = "runs/tiny_sudoku"
