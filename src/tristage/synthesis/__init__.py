"""Use a trained model: `TTS.from_pretrained(folder).synthesize(...)`, `tristage synthesize`, the MLflow
model and the web demo (`make app`). See api.py for the arguments."""

from tristage.synthesis.api import TTS, Request, Result, edit_caption

__all__ = ["TTS", "Request", "Result", "edit_caption"]
