# LLaDA-8B-Instruct on sudoku: torchrun --nproc_per_node 8 train.py configs/llada_sudoku.py
exec(open(__file__.replace("llada_sudoku.py", "_llada_common.py")).read())
task = "sudoku"
output_dir = "runs/llada_sudoku"
