"""lkconv benchmarks: `python -m bench` (kernel level) and `python -m bench.models` (model level)."""
