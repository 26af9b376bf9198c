"""DNSMOS (P.835 SIG / BAK / OVRL and P.808) from the ONNX models inside the `speechmos` wheel, 16 kHz."""

from __future__ import annotations

import numpy as np

from tristage.errors import UserError

SAMPLE_RATE = 16000


class DNSMOS:
    name = "DNSMOS (speechmos ONNX)"

    def __init__(self):
        try:
            from speechmos import dnsmos
        except ImportError as exc:
            raise UserError(
                f"evaluate.audio_metrics.dnsmos: speechmos cannot load ({exc}); pip install speechmos "
                "onnxruntime, or switch it off"
            ) from None
        self._run = dnsmos.run

    def __call__(self, wav: np.ndarray) -> dict[str, float]:
        """wav float 16 kHz -> {dnsmos_sig, dnsmos_bak, dnsmos_ovrl, dnsmos_p808} (1..5). Clips shorter
        than the model's 9 s window are repeated to fill it (speechmos' own rule)."""
        x = np.clip(np.asarray(wav, np.float32), -1.0, 1.0)
        if x.size == 0 or not np.any(x):
            return dict(dnsmos_sig=None, dnsmos_bak=None, dnsmos_ovrl=None, dnsmos_p808=None)
        r = self._run(x, SAMPLE_RATE)
        return dict(
            dnsmos_sig=float(r["sig_mos"]),
            dnsmos_bak=float(r["bak_mos"]),
            dnsmos_ovrl=float(r["ovrl_mos"]),
            dnsmos_p808=float(r["p808_mos"]),
        )
