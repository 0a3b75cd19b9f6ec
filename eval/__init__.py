"""Benchmark and evaluation scripts: `python eval/NAME.py` from anywhere, or `python -m eval.NAME` from the repo root."""
