"""The `annotate` stage: measure every prepared utterance, bin the measures into lexicon values, caption
the rows that have no caption (see run.py). The measuring itself lives in `tristage.audio.measures`."""
