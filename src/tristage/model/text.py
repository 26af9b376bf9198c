"""The decoder's text front-end: transcript -> token ids (UTF-8 bytes of a string, 0..255).

- `bytes`: the transcript's own UTF-8 bytes. Any language, no dictionary; the model must learn
  spelling-to-sound itself (hard with little data).
- `phonemes`: espeak-ng's phonemes of the transcript (ASCII phoneme mnemonics, e.g.
  "h@l'oU w'3:ld", stress marks included), in the voice `phoneme_voice` (an espeak-ng voice name:
  en-us, en-gb, de, ko, ...), with each punctuation mark kept after its clause (",", "?", ...), so
  intonation cues survive. The usual front-end of TTS systems (VITS, Piper, StyleTTS); libespeak-ng
  comes with the `espeakng-loader` wheel.

Token ids are bytes either way (`TEXT_VOCAB` = 256 + pad), so the embedding does not depend on the
front-end; the model's config records which one it was trained with, and synthesis uses the same.
A transcript longer than `max_text_len` tokens is never cut here: `encode_text` reports it
(`TextTooLong`), training skips the utterance and synthesis splits the text (`split_text`).
"""
from __future__ import annotations

import ctypes
import re
import threading

FRONTENDS = ("bytes", "phonemes")
_LOCK = threading.Lock()  # libespeak-ng is one global state per process
_CLAUSE = re.compile(r"([^,.;:!?]+)([,.;:!?]*)")


class TextTooLong(ValueError):
    def __init__(self, n_tokens: int, max_len: int):
        super().__init__(f"{n_tokens} text tokens > max_text_len {max_len}")
        self.n_tokens, self.max_len = n_tokens, max_len


def _espeak():
    from tristage.corpus.espeak import Espeak

    e = Espeak.get()
    lib = e._lib
    if not getattr(lib, "_phonemes_ready", False):
        lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        lib._phonemes_ready = True
    return e, lib


def _clause_phonemes(lib, text: str) -> str:
    buf = ctypes.create_string_buffer(text.encode("utf-8") + b"\0")
    ptr = ctypes.c_void_p(ctypes.addressof(buf))
    out = []
    while ptr.value:  # espeak advances the pointer clause by clause; NULL at the end
        got = lib.espeak_TextToPhonemes(ctypes.byref(ptr), 1, 0)  # UTF-8 in, ASCII phoneme mnemonics out
        if got:
            out.append(got.decode("ascii", "replace").strip())
    return " ".join(p for p in out if p)


def phonemize(text: str, voice: str = "en-us") -> str:
    """espeak-ng's ASCII phonemes of `text`, punctuation kept: "Hello, world." -> "h@l'oU, w'3:ld."."""
    e, lib = _espeak()
    with _LOCK:
        e.set_voice(voice)
        parts = []
        for words, punct in _CLAUSE.findall(text):
            ph = _clause_phonemes(lib, words) if words.strip() else ""
            if ph or punct:
                parts.append(ph + punct)
    return " ".join(parts).strip()


def text_string(text: str, frontend: str = "bytes", voice: str = "en-us") -> str:
    """What the decoder reads, as a string: the transcript itself or its phonemes."""
    if frontend == "bytes":
        return text
    if frontend == "phonemes":
        return phonemize(text, voice)
    raise ValueError(f"unknown text front-end {frontend!r} (one of {', '.join(FRONTENDS)})")


def encode_text(text: str, max_len: int, frontend: str = "bytes", voice: str = "en-us") -> list[int]:
    """Transcript -> token ids (bytes of `text_string`); TextTooLong past max_len, never cut."""
    ids = list(text_string(text, frontend, voice).encode("utf-8")) or [32]
    if len(ids) > max_len:
        raise TextTooLong(len(ids), max_len)
    return ids


def split_text(text: str, fits) -> list[str]:
    """Pieces of `text` for which `fits(piece)` holds, cut at sentence ends, then clause marks, then
    spaces (a single word that still does not fit is cut by characters). Joined back with spaces they
    give the text's words in order: nothing is dropped."""
    text = " ".join(text.split())
    if not text or fits(text) or len(text) == 1:
        return [text] if text else []
    for pattern in (r"(?<=[.!?])\s+", r"(?<=[,;:])\s+", r"\s+"):
        pieces = [p for p in re.split(pattern, text) if p]
        if len(pieces) > 1:
            out, cur = [], ""
            for p in pieces:
                cand = f"{cur} {p}".strip()
                if cur and not fits(cand):
                    out.append(cur)
                    cur = p
                else:
                    cur = cand
            out.append(cur)
            return [q for piece in out for q in split_text(piece, fits)]
    half = max(1, len(text) // 2)  # one long word: cut it
    return split_text(text[:half], fits) + split_text(text[half:], fits)
