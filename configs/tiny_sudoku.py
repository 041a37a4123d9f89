# The embedded model on generated 4x4 Sudoku: python train.py configs/tiny_sudoku.py
# The answer "<answer>" + 16 digits + "</answer>" + EOS is 19 tokens, so completions are 24 long
# (3 blocks of 8); m = L/4 steps as the Countdown default. Accuracy is cell accuracy.
# A short warm start on 10 blanks, so that AGRPO has something to learn: after the default 2,500
# SFT steps the model already filled ~99% of the cells in its rollouts (with 6 blanks and with 10,
# measured), and groups of equal rewards give zero advantages. 300 steps: 50.6% greedy cell accuracy.
model_name = "tiny"
task = "sudoku"
sudoku_blanks = 10
warm_start_steps = 300
gen_length = 24
steps = 6
eval_gen_length = 24
eval_steps = 6
# lr 5e-5: train.py's 3e-4 lowered held-out cell accuracy by ~10 points within 50 steps
# (bench/compare_sudoku_lr5e-5/RESULTS.md); at 5e-5 it stays at the warm start's.
lr = 5e-5
out_dir = "runs/tiny_sudoku"
