"""Benchmarks: each script prints ratios measured side by side in one run; `make bench` runs all."""
