# LLaDA-8B-Instruct on sudoku: torchrun --nproc_per_node 8 train.py configs/llada_sudoku.py
# Generated 4x4 puzzles, test grids held out by solution (41 of the 288 grids; 21 more for validation).
# Training puzzles have 7-12 blanks; test puzzles the blank counts of SPG's 256-puzzle test file
# (7: 82, 8: 83, 9: 76, 11: 12, 12: 3). SPG's CSV files load as --train_file=... --eval_file=...
exec(open(__file__.replace("llada_sudoku.py", "_llada_common.py")).read())
task = "sudoku"
sudoku_blanks = (7, 12)
sudoku_test_blanks = ((7, 82), (8, 83), (9, 76), (11, 12), (12, 3))
eval_items = 256
output_dir = "runs/llada_sudoku"
