"""Experiments: measurements run by hand to decide a design question, not part of `make bench`."""
