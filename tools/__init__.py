"""Tools around a run: sft.py (the embedded base models) and export.py (a run as a Hugging Face folder)."""
