"""`tristage import <format> SRC --out DIR`: LJSpeech, LibriTTS, Hugging Face Parquet and lhotse corpora
-> a manifest `prepare` reads (see formats.py)."""
