"""Speech synthesis to memory with libespeak-ng (shipped by the `espeakng-loader` wheel), via ctypes.

    tts = Espeak()                       # one per process: libespeak-ng keeps global state
    wav = tts.synth("Hello there.", voice="en-gb-scotland+f3", rate=170, pitch=60, range_=50, volume=100)
    wav.dtype, tts.sample_rate           # int16, 22050

espeak-ng is a singleton inside the process (one voice, one set of parameters, one callback),
so `Espeak.get()` hands out one shared instance and the corpus builder runs one per worker
process. Synthesis is deterministic: the same text and settings give the same samples.
"""
from __future__ import annotations

import ctypes
from typing import ClassVar

import numpy as np

from tristage.errors import UserError

# espeak_AUDIO_OUTPUT: synchronous synthesis, samples delivered to the callback.
AUDIO_OUTPUT_SYNCHRONOUS = 2
# espeak_PARAMETER
PARAM_RATE, PARAM_VOLUME, PARAM_PITCH, PARAM_RANGE = 1, 2, 3, 4
POS_CHARACTER = 1
CHARS_UTF8 = 1
EE_OK = 0

# int (*t_espeak_callback)(short *wav, int numsamples, espeak_EVENT *events); return 0 to go on
SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class Espeak:
    """The process's libespeak-ng, initialised for synchronous synthesis to memory."""

    _instance: ClassVar["Espeak | None"] = None

    @classmethod
    def get(cls) -> "Espeak":
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def __init__(self):
        try:
            import espeakng_loader
        except ImportError:
            raise UserError(
                "corpus: the `espeakng-loader` package is missing; pip install espeakng-loader"
            ) from None
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [SYNTH_CALLBACK]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.POINTER(ctypes.c_uint),
            ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synchronize.restype = ctypes.c_int

        data = espeakng_loader.get_data_path().encode()
        # The data path argument is the folder that *contains* espeak-ng-data... or the folder itself
        # in espeak-ng >= 1.51 when it is named espeak-ng-data; both are accepted.
        sr = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, data, 0)
        if sr <= 0:
            raise RuntimeError(f"espeak_Initialize failed (data path {data.decode()})")
        self.sample_rate = int(sr)
        self._lib = lib
        self._chunks: list[np.ndarray] = []

        def _collect(wav, n, _events):  # called from inside espeak_Synth, same thread
            if n > 0 and wav:
                self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            return 0

        self._callback = SYNTH_CALLBACK(_collect)  # keep a reference: espeak holds the pointer
        lib.espeak_SetSynthCallback(self._callback)
        self._voice: str | None = None

    def set_voice(self, voice: str) -> None:
        if voice != self._voice:
            if self._lib.espeak_SetVoiceByName(voice.encode()) != EE_OK:
                raise UserError(f"corpus: espeak-ng has no voice {voice!r}")
            self._voice = voice

    def synth(self, text: str, voice: str, rate: int = 175, pitch: int = 50, range_: int = 50,
              volume: int = 100) -> np.ndarray:
        """Samples (int16, `self.sample_rate` Hz) of `text` spoken with these settings.

        rate: words per minute (80..450); pitch, range_: 0..100 (50 = the voice's own);
        volume: amplitude 0..200 (100 = normal).
        """
        self.set_voice(voice)
        for param, value in (
            (PARAM_RATE, rate),
            (PARAM_PITCH, pitch),
            (PARAM_RANGE, range_),
            (PARAM_VOLUME, volume),
        ):
            self._lib.espeak_SetParameter(param, int(value), 0)
        buf = text.encode("utf-8") + b"\0"
        self._chunks = []
        err = self._lib.espeak_Synth(buf, len(buf), 0, POS_CHARACTER, 0, CHARS_UTF8, None, None)
        if err != EE_OK:
            raise RuntimeError(f"espeak_Synth failed ({err}) for {text!r}")
        self._lib.espeak_Synchronize()
        out = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        self._chunks = []
        return out.astype(np.int16, copy=False)
