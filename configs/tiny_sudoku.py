# The embedded model on generated 4x4 Sudoku: python train.py configs/tiny_sudoku.py
# "<answer>" + 16 digits + "</answer>" + EOS is 19 tokens: completions of 24 (3 blocks of 8), m = G/4.
# The shipped base (models/tiny-sudoku) had a short SFT on 10 blanks, which leaves AGRPO room to
# learn (a long one fills nearly every cell, and groups of equal rewards carry no advantage);
# accuracy is cell accuracy.
model_name_or_path = "models/tiny-sudoku"
task = "sudoku"
sudoku_blanks = (10, 10)
max_completion_length = 24
sampling_steps = 6
# a rate at which training visibly moves the model (no swept rate raised validation accuracy in 400
# steps: bench/compare_sudoku/RESULTS.md)
learning_rate = 5e-5
output_dir = "runs/tiny_sudoku"
