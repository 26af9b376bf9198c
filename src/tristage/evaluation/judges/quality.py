"""DNSMOS (P.835 SIG / BAK / OVRL and P.808) from the ONNX models inside the `speechmos` wheel, 16 kHz."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tristage.errors import UserError

SAMPLE_RATE = 16000
WINDOW = int(9.01 * SAMPLE_RATE)  # the models' input: 9.01 s


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
        import onnxruntime as ort

        # speechmos' own sessions use every core; one thread each keeps evaluate from oversubscribing
        models = Path(dnsmos.__file__).parent / "dnsmos_models"
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        self._model = dnsmos.DNSMOS.__new__(dnsmos.DNSMOS)
        self._model.primary_model_path = str(models / "sig_bak_ovr.onnx")
        self._model.onnx_sess = ort.InferenceSession(str(models / "sig_bak_ovr.onnx"), opts)
        self._model.p808_onnx_sess = ort.InferenceSession(str(models / "model_v8.onnx"), opts)

    def __call__(self, wav: np.ndarray) -> dict[str, float]:
        """wav float 16 kHz -> {dnsmos_sig, dnsmos_bak, dnsmos_ovrl, dnsmos_p808} (1..5). Clips shorter
        than the model's 9.01 s window are repeated to fill exactly one window. (speechmos doubles a
        short clip until it is longer than the window and averages every 1 s hop of the result: seven
        windows of the same periodic signal for a 2 s clip, 7x the time for scores within 0.04 of one
        window's, measured on 14 demo clips; clips over 9.01 s are scored by speechmos' hops as before.)"""
        x = np.clip(np.asarray(wav, np.float32), -1.0, 1.0)
        if x.size == 0 or not np.any(x):
            return dict(dnsmos_sig=None, dnsmos_bak=None, dnsmos_ovrl=None, dnsmos_p808=None)
        if x.size < WINDOW:
            x = np.resize(x, WINDOW)  # the clip repeated, cut at the window's end
        r = self._model(x, SAMPLE_RATE, False)  # P.835 (not personalised)
        return dict(
            dnsmos_sig=float(r["sig_mos"]),
            dnsmos_bak=float(r["bak_mos"]),
            dnsmos_ovrl=float(r["ovrl_mos"]),
            dnsmos_p808=float(r["p808_mos"]),
        )
