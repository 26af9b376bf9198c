"""Thin DVC stage entry points: `python -m steps.<stage>`."""
