"""Benchmarks of abrouter against nginx and a hand-written proxy: `python -m bench.run` (docs/performance.md)."""
