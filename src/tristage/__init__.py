"""tristage: a reproducible three-stage training pipeline for controllable text-to-speech."""

__version__ = "0.1.0"
