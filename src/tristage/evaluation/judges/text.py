"""Text normalisation for WER / CER, and the rates (jiwer).

Both the reference and the ASR transcript are normalised the same way before scoring:
Unicode NFKC, lower case, apostrophes kept inside words ("don't"), every other character
that is not a letter or digit becomes a space, runs of spaces collapse. Numbers are not
spelled out (the demo corpus has none; use a normaliser upstream for corpora that do).
"""

from __future__ import annotations

import re
import unicodedata

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'"})
_NOT_WORD = re.compile(r"[^\w']+|_")
_EDGE_APOS = re.compile(r"(?<!\w)'|'(?!\w)")


def normalize(text: str) -> str:
    """ "Hello, World!  It's" -> "hello world it's"."""
    text = unicodedata.normalize("NFKC", str(text or "")).translate(_APOSTROPHES).lower()
    text = _EDGE_APOS.sub(" ", _NOT_WORD.sub(" ", text))
    return " ".join(text.split())


def error_rates(reference: str, hypothesis: str) -> tuple[float, float]:
    """(wer, cer) of `hypothesis` against `reference`, both normalised. An empty hypothesis scores 1.0;
    an empty reference is an error (nothing to score against)."""
    import jiwer

    ref, hyp = normalize(reference), normalize(hypothesis)
    if not ref:
        raise ValueError("error_rates: the reference text is empty after normalisation")
    if not hyp:
        return 1.0, 1.0
    return float(jiwer.wer(ref, hyp)), float(jiwer.cer(ref, hyp))
