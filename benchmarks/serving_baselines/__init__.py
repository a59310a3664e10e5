"""Servers that bench_serving.py measures ours against, each started in its own process."""
