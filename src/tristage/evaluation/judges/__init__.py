"""Audio judges: listen to ground-truth, resynthesised and generated speech.

- `text`: normalisation and WER / CER (jiwer);
- `asr`: Whisper tiny.en (faster-whisper, offline; the default when installed), pocketsphinx (the
  fallback), or a local CTranslate2 / Hugging Face ASR folder (`evaluate.asr`);
- `speaker`: resemblyzer GE2E (default) or a local Hugging Face speaker model (`evaluate.speaker_encoder`);
- `quality`: DNSMOS (speechmos);
- `adherence`: pitch / speed bins of the `annotate` stage's measuring code vs the caption's request;
- `emotion`: an emotion probe on the model's emotion vector of the generated audio.

`tristage.evaluation.audio` runs them on the three rows (ground truth, codec resynthesis, each stage).
"""
