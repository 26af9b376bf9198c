"""`tristage import <format> SRC --out DIR`: LJSpeech, LibriTTS, LibriSpeech, a plain folder of pairs (`auto`
tells them apart), Hugging Face Parquet and lhotse corpora -> a manifest `prepare` reads (see formats.py,
folders.py)."""
