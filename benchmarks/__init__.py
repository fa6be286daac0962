"""Ponder benchmarks: same `create_app()`, fixed seeds, JSON out."""
