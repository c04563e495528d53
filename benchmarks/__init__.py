"""Benchmarks of pimesh against plain baselines; run them with `python -m benchmarks.NAME`.

See benchmarks/README.md for what each one measures and the figures last measured.
"""
