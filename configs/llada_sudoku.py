# LLaDA-8B-Instruct on sudoku: torchrun --nproc_per_node 8 train.py configs/llada_sudoku.py
# Generated 4x4 puzzles with 7-12 blanks, test grids held out by solution (SPG's split has the same
# blanks; its CSV files load as --train_file=... --eval_file=... with their Puzzle, Solution columns).
exec(open(__file__.replace("llada_sudoku.py", "_llada_common.py")).read())
task = "sudoku"
sudoku_blanks = (7, 12)
eval_items = 256
output_dir = "runs/llada_sudoku"
