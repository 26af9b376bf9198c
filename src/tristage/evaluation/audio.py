"""The audio judges of `evaluate`, on three rows: ground truth, codec resynthesis, each stage.

    judges = AudioJudges(params, src, vocoder, codec_info)
    plan = judges.plan(manifest, data)            # the sample plan, seen + unseen speakers, `judged` marked
    for stage ...: judges.add_stage(stage, model, data, plan, wavs, sample_rate, max_ref, device)
    rows = judges.finish(tracker)   # {"ground_truth": {...}, "resynthesis": {...}, "stage1": {...}}

Rows (the same judged requests in each):
- `ground_truth`: the validation utterance's own audio (matched requests only: a cross request has
  no recording). The anchor that says what the judges give real speech of this corpus.
- `resynthesis`: the same utterances' codec codes decoded by the features stage's codec: the
  ceiling any stage can reach through this codec.
- `<stage>`: the generated audio (matched and cross requests). Its length is chosen by the model's
  stop head (`length_source: model` in the table), capped by `evaluate.max_sample_frames`.

Per clip: ASR transcript, `wer` / `cer` (normalised text, jiwer), `speaker_sim` (cosine of
speaker embeddings to ANOTHER utterance of the target speaker, the same reference for every row)
and `speaker_sim_other` (to an utterance of another speaker), DNSMOS `dnsmos_sig/bak/ovrl`,
caption adherence (`pitch_measured` / `speed_measured` vs the caption's requested values, the
annotate stage's measuring and binning code), and the emotion probe's prediction on the audio's
emotion vector. `emotion_transfer_acc` of a stage: over its cross requests (speaker A, emotion
reference of B), prediction == B's emotion; of an anchor row: the final stage's probe on the real
audio against its own emotion (the probe's ceiling on speech).

Speakers held out of training (`stageN.heldout_speakers`) are judged as `unseen`; each row
reports `seen_speakers` and `unseen_speakers` summaries besides the overall one.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tristage.errors import UserError
from tristage.evaluation.judges.text import normalize
from tristage.evaluation.metrics import EXTRA_KEYS, SUMMARY_KEYS
from tristage.evaluation.samples import sample_plan
from tristage.features.codec import codec_speaks

log = logging.getLogger("tristage.evaluate")

SR = 16000  # every judge listens at 16 kHz
GROUND_TRUTH, RESYNTHESIS = "ground_truth", "resynthesis"
# training recordings measured to fit the attribute bins when the manifest is not annotated
BIN_RECORDINGS = 200
@dataclasses.dataclass
class Clip:
    row: str  # ground_truth | resynthesis | <stage>
    name: str  # the request's name (matched_00, cross_01, unseen_matched_00, ...)
    kind: str  # matched | cross
    split: str  # seen | unseen (speaker held out of training)
    text: str
    speaker: str  # the target speaker (A)
    utterance: str  # id of A's validation utterance (its text; its mel was the speaker reference)
    caption_source: str  # id of the utterance whose caption (and attributes) were requested
    emotion_target: str | None  # the emotion reference's label
    wav: np.ndarray  # float32, 16 kHz
    wav_path: str  # relative to evaluate.samples_dir
    is_speech: bool
    length_source: str = "recording"
    emotion_pred: str | None = None
    scores: dict = dataclasses.field(default_factory=dict)


def to_16k(wav: np.ndarray, sr: int) -> np.ndarray:
    import librosa

    x = np.asarray(wav, np.float32)
    if x.ndim == 2:
        x = x.mean(axis=1)
    return x if sr == SR else librosa.resample(x, orig_sr=sr, target_sr=SR).astype(np.float32)


def _mean(values: Sequence[Any]) -> float | None:
    v = [float(x) for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return float(np.mean(v)) if v else None


def _spread(key: str, values: Sequence[Any]) -> dict[str, Any]:
    """Standard error of a clip mean (sample sd / sqrt(n)) and its 95% interval; n = clips measured."""
    v = np.array([float(x) for x in values if x is not None and np.isfinite(float(x))])
    if len(v) < 2:
        return {f"{key}_se": None, f"{key}_ci95": None, f"{key}_n": int(len(v))}
    mean, se = float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v)))
    ci = [round(mean - 1.96 * se, 4), round(mean + 1.96 * se, 4)]
    return {f"{key}_se": round(se, 4), f"{key}_ci95": ci, f"{key}_n": int(len(v))}


def _text(v) -> str | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) or str(v) == "" else str(v)


class AudioJudges:
    def __init__(self, params, src, vocoder, codec_info: dict, device: str = "cpu"):
        self.params, self.ep, self.src = params, params.evaluate, src
        self.am = self.ep.audio_metrics
        self.enabled = self.ep.audio_judges and "audio" in src.manifest.columns
        if self.ep.audio_judges and not self.enabled:
            log.warning(
                "audio judges off: the manifest %s has no `audio` column to judge against", self.ep.prepared
            )
        self.vocoder, self.device = vocoder, device
        self.codec_speaks = codec_speaks(codec_info)
        self.by_id = src.manifest.drop_duplicates("id").set_index("id")
        self.clips: list[Clip] = []
        self.probe_stage: str | None = None
        self.seconds: dict[str, float] = {}
        self._anchored = False

    # -- plan -----------------------------------------------------------------------------
    def rows(self, data, idx: Sequence[int]) -> list[dict]:
        """Utterances as dicts (id, speaker, text, caption, emotion) for the sample plan."""
        out = []
        for i in idx:
            ex = data.examples[i]
            r = self.by_id.loc[ex.id]
            out.append(
                dict(
                    id=ex.id,
                    speaker=ex.speaker,
                    text=_text(r.get("text")) or "",
                    caption=_text(r.get("caption")) or "",
                    emotion=_text(r.get("emotion")),
                )
            )
        return out

    def plan(self, data) -> list[dict]:
        """The seen plan (`n_samples` matched + `n_cross` cross requests, from the split `sample_from`
        names) and `n_unseen` matched requests of the held-out speakers; every request is judged when the
        judges are on."""
        ep = self.ep
        seen = data.val_idx if ep.sample_from == "validation" else data.train_idx
        plan = sample_plan(self.rows(data, seen), ep.n_samples, ep.seed, ep.n_cross)
        for req in plan:
            req.update(split="seen", judged=self.enabled)
        heldout = getattr(data, "heldout_idx", [])
        if heldout and ep.n_unseen:
            for req in sample_plan(self.rows(data, heldout), ep.n_unseen, ep.seed, 0):
                req.update(name=f"unseen_{req['name']}", split="unseen", judged=self.enabled)
                plan.append(req)
        return plan

    # -- collecting the audio -------------------------------------------------------------
    def _load_recording(self, uid: str) -> np.ndarray:
        import soundfile as sf

        from tristage.data.manifest import resolve_audio

        path = resolve_audio(self.ep.prepared, str(self.by_id.loc[uid, "audio"]))
        if not path.is_file():
            raise UserError(
                f"{self.ep.prepared}: utterance {uid}: audio {path} not found (the judges need it)"
            )
        wav, sr = sf.read(str(path), dtype="float32")
        return to_16k(wav, sr)

    def _clip(self, row: str, req: dict, wav: np.ndarray, wav_path: str, is_speech: bool, **kw) -> Clip:
        caption_source = req["speaker_ref"]["id"] if req["kind"] == "matched" else req["emotion_ref"]["id"]
        return Clip(
            row=row,
            name=req["name"],
            kind=req["kind"],
            split=req.get("split", "seen"),
            text=req["text"],
            speaker=str(req["speaker_ref"]["speaker"]),
            utterance=str(req["speaker_ref"]["id"]),
            caption_source=str(caption_source),
            emotion_target=req["emotion_ref"].get("emotion"),
            wav=wav,
            wav_path=wav_path,
            is_speech=is_speech,
            **kw,
        )

    def _anchors(self, data, plan: list[dict]) -> None:
        pos = {ex.id: i for i, ex in enumerate(data.examples)}
        for req in plan:
            if not req.get("judged") or req["kind"] != "matched":
                continue
            uid = req["speaker_ref"]["id"]
            self.clips.append(
                self._clip(
                    GROUND_TRUTH, req, self._load_recording(uid), f"{GROUND_TRUTH}/{req['name']}.wav", True
                )
            )
            wav, sr = self.vocoder(data.features(pos[uid])[1])
            self.clips.append(
                self._clip(
                    RESYNTHESIS,
                    req,
                    to_16k(wav, sr),
                    f"{RESYNTHESIS}/{req['name']}.wav",
                    self.codec_speaks,
                )
            )
        self._anchored = True

    def add_stage(
        self,
        stage: str,
        model,
        data,
        plan: list[dict],
        wavs: Sequence[np.ndarray],
        sample_rate: int,
        max_ref: int,
        device: str,
        length_source: str = "reference",
    ) -> None:
        """Keep the stage's judged clips; run this stage's emotion probe while its model is loaded."""
        if not self.enabled:
            return
        if not self._anchored:
            self._anchors(data, plan)
            judged = {normalize(req["text"]) for req in plan if req.get("judged")}
            texts = [_text(self.by_id["text"].get(data.examples[i].id)) or "" for i in data.train_idx]
            self.train_ids = [data.examples[i].id for i in data.train_idx]
            self.lm_texts = [t for t in texts if normalize(t) not in judged][: self.am.asr_lm_max_sentences]
        new = [
            self._clip(
                stage,
                req,
                to_16k(w, sample_rate),
                f"{stage}/{req['name']}.wav",
                self.codec_speaks,
                length_source=length_source,
            )
            for req, w in zip(plan, wavs)
            if req.get("judged")
        ]
        self.clips += new
        if self.am.emotion_transfer:
            t0 = time.perf_counter()
            anchors = [c for c in self.clips if c.row in (GROUND_TRUTH, RESYNTHESIS)]
            preds = self._emotion_predictions(model, data, [c.wav for c in new + anchors], max_ref, device)
            if preds is not None:
                for c, p in zip(new, preds[: len(new)]):
                    c.emotion_pred = p
                for c, p in zip(anchors, preds[len(new) :]):  # the last stage's probe wins for the anchors
                    c.emotion_pred = p
                self.probe_stage = stage
            self.seconds["emotion"] = self.seconds.get("emotion", 0.0) + time.perf_counter() - t0

    def _emotion_predictions(self, model, data, wavs, max_ref: int, device: str) -> list[str] | None:
        from tristage.evaluation.judges.emotion import EmotionProbe, audio_emotion_vectors
        from tristage.evaluation.probes import emotion_vectors, probe_subset

        if "emotion" not in self.by_id.columns:
            return None
        labels = {i: _text(self.by_id["emotion"].get(data.examples[i].id)) for i in data.train_idx}
        train = [i for i in data.train_idx if labels[i]]
        train = [train[k] for k in probe_subset(len(train), self.ep.max_probe_utterances, self.ep.seed)]
        if len({labels[i] for i in train}) < 2:
            return None
        probe = EmotionProbe(
            emotion_vectors(model, data, train, max_ref, device),
            [labels[i] for i in train],
            seed=self.ep.seed,
        )
        vecs = audio_emotion_vectors(model, wavs, SR, self.params.features.mel, max_ref, device)
        return probe.predict(vecs)

    # -- judging ----------------------------------------------------------------------------
    def _reference_ids(self, speaker: str, utterance: str) -> tuple[str | None, str | None]:
        """(another utterance of `speaker`, an utterance of another speaker), fixed by seed and utterance."""
        if not hasattr(self, "_by_speaker"):
            self._by_speaker: dict[str, list[str]] = {}
            for uid, spk in sorted(zip(self.by_id.index.astype(str), self.by_id["speaker"].astype(str))):
                self._by_speaker.setdefault(spk, []).append(uid)
        rng = random.Random(f"{self.ep.seed}:{utterance}")
        same = [u for u in self._by_speaker.get(speaker, []) if u != utterance]
        others = sorted(s for s in self._by_speaker if s != speaker)
        other = rng.choice(self._by_speaker[rng.choice(others)]) if others else None
        return (rng.choice(same) if same else None), other

    def _timed(self, key: str, fn, *args):
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - t0

    def judge_clips(self) -> None:
        am, ep = self.am, self.ep
        if am.intelligibility:
            from tristage.evaluation.judges.asr import build_lm, bundled_whisper, load_asr
            from tristage.evaluation.judges.text import error_rates

            with tempfile.TemporaryDirectory() as tmp:
                lm = None
                sphinx = ep.asr is None and (am.asr_judge == "pocketsphinx"
                                             or (am.asr_judge == "auto" and bundled_whisper() is None))
                if sphinx and am.asr_lm == "train_texts" and getattr(self, "lm_texts", None):
                    lm = self._timed("asr_load", build_lm, self.lm_texts, Path(tmp) / "train_texts.arpa")
                asr = self._timed("asr_load", load_asr, ep.asr, self.device, lm, am.asr_judge)
            self.asr_name = getattr(asr, "name", str(ep.asr))
            for c in self.clips:
                hyp = self._timed("asr", asr, c.wav)
                wer, cer = error_rates(c.text, hyp)
                c.scores.update(transcript=hyp, wer=wer, cer=cer)
        if am.speaker_sim:
            from tristage.evaluation.judges.speaker import cosine, load_speaker_encoder

            enc = self._timed("speaker_load", load_speaker_encoder, ep.speaker_encoder, self.device)
            cache: dict[str, np.ndarray] = {}

            def ref(uid):
                if uid not in cache:
                    cache[uid] = self._timed("speaker", enc, self._load_recording(uid))
                return cache[uid]

            for c in self.clips:
                same, other = self._reference_ids(c.speaker, c.utterance)
                emb = self._timed("speaker", enc, c.wav)
                c.scores.update(
                    speaker_ref=same,
                    speaker_sim=None if same is None else cosine(emb, ref(same)),
                    speaker_sim_other=None if other is None else cosine(emb, ref(other)),
                )
        if am.dnsmos:
            from tristage.evaluation.judges.quality import DNSMOS

            mos = self._timed("dnsmos_load", DNSMOS)
            seen: dict[str, int] = {}
            for c in self.clips:  # the first `dnsmos_clips` of each row (it rates 9 s windows: ~1 s a clip)
                seen[c.row] = seen.get(c.row, 0) + 1
                if seen[c.row] <= am.dnsmos_clips:
                    c.scores.update(self._timed("dnsmos", mos, c.wav))
        if am.caption_adherence:
            self._judge_adherence()
        for c in self.clips:
            if c.emotion_pred is not None and c.emotion_target:
                c.scores["emotion_pred"] = c.emotion_pred
                c.scores["emotion_hit"] = float(c.emotion_pred == c.emotion_target)

    def _judge_adherence(self) -> None:
        try:
            from tristage.evaluation.judges.adherence import ATTRIBUTES, AdherenceJudge, agreement

            bins_file = Path(self.ep.prepared).parent / "bins.json"  # written by the annotate stage
            if bins_file.is_file():
                judge = self._timed("adherence_load", AdherenceJudge.from_file, bins_file)
                self.adherence_note = f"the annotate stage's bins ({bins_file.name})"
            elif {"f0_hz", "speaking_rate"} <= set(
                self.src.manifest.columns
            ):  # the annotate stage's measures
                judge = self._timed("adherence_load", AdherenceJudge.from_manifest, self.src.manifest)
                self.adherence_note = "bins fitted on the manifest's measured columns"
            else:  # not annotated: measure a fixed sample of the training recordings with the same code
                judge = self._timed("adherence_load", AdherenceJudge.from_recordings, self._bin_recordings())
                self.adherence_note = f"bins fitted on {BIN_RECORDINGS} measured training recordings at most"
        except (ImportError, KeyError) as exc:
            log.warning("caption adherence skipped: %s", exc)
            self.adherence_note = f"not measured: {exc}"
            return
        for c in self.clips:
            gender = _text(self.by_id["gender"].get(c.utterance)) if "gender" in self.by_id.columns else None
            res = self._timed("adherence", judge, c.wav, c.text, gender)
            c.scores.update(res)
            for attr in ATTRIBUTES:
                want = _text(self.by_id[attr].get(c.caption_source)) if attr in self.by_id.columns else None
                c.scores[f"{attr}_requested"] = want
                c.scores[f"{attr}_agreement"] = agreement(want, res.get(f"{attr}_measured"))
                c.scores[f"{attr}_agreement_coarse"] = agreement(
                    want, res.get(f"{attr}_measured"), coarse=True
                )

    def _bin_recordings(self):
        ids = sorted(getattr(self, "train_ids", []))
        ids = random.Random(self.ep.seed).sample(ids, min(len(ids), BIN_RECORDINGS))
        for uid in ids:
            gender = _text(self.by_id["gender"].get(uid)) if "gender" in self.by_id.columns else None
            yield self._load_recording(uid), _text(self.by_id["text"].get(uid)) or "", gender

    # -- summaries and outputs -------------------------------------------------------------------
    @staticmethod
    def summarize(clips: Sequence[Clip], row: str) -> dict[str, Any]:
        """The mean of each metric over a row's clips (None where nothing was measured)."""
        get = lambda k, sel=clips: [c.scores.get(k) for c in sel]
        out: dict[str, Any] = {k: _mean(get(k)) for k in SUMMARY_KEYS if k != "emotion_transfer_acc"}
        if row in (GROUND_TRUTH, RESYNTHESIS):
            out["emotion_transfer_acc"] = _mean(get("emotion_hit"))  # the probe on real / resynthesised audio
        else:
            out["emotion_transfer_acc"] = _mean(get("emotion_hit", [c for c in clips if c.kind == "cross"]))
        out.update({k: _mean(get(k)) for k in EXTRA_KEYS if k != "emotion_acc_matched"})
        out["emotion_acc_matched"] = _mean(get("emotion_hit", [c for c in clips if c.kind == "matched"]))
        out["n_clips"] = len(clips)
        out.update(_spread("wer", get("wer")))
        return out

    def finish(self, tracker=None) -> dict[str, dict]:
        """Judge every clip, write the anchor audio, the per-utterance table and the plot -> row summaries."""
        if not self.enabled or not self.clips:
            return {}
        self.judge_clips()
        self._write_anchor_audio()
        rows: dict[str, dict] = {}
        for row in dict.fromkeys(c.row for c in self.clips):
            clips = [c for c in self.clips if c.row == row]
            s = self.summarize(clips, row)
            s["is_speech"] = clips[0].is_speech
            s["label"] = "speech" if clips[0].is_speech else "not speech (random-init codec)"
            s["asr"] = getattr(self, "asr_name", None)  # the judge behind wer / cer
            for split in ("seen", "unseen"):
                part = [c for c in clips if c.split == split]
                if part:
                    s[f"{split}_speakers"] = {
                        k: v
                        for k, v in self.summarize(part, row).items()
                        if k in SUMMARY_KEYS or k == "n_clips"
                    }
            rows[row] = s
        table = self.table()
        self._write_table(table)
        plot = self._plot(rows)
        log.info(
            "audio judges: %d clips, seconds %s",
            len(self.clips),
            {k: round(v, 1) for k, v in self.seconds.items()},
        )
        if tracker is not None:
            if hasattr(tracker, "log_table"):
                tracker.log_table(table, "evaluate/utterances.json")
            tracker.log_artifact(self.ep.utterances, artifact_path="evaluate")
            tracker.log_artifact(plot, artifact_path="plots")
        return rows

    def info(self) -> dict[str, Any]:
        """What judged (for metrics/evaluate.json's `audio_judges`)."""
        return dict(
            asr=getattr(self, "asr_name", None),
            speaker_encoder=str(self.ep.speaker_encoder)
            if self.ep.speaker_encoder
            else "resemblyzer GE2E (wheel weights)",
            quality="DNSMOS P.835 (speechmos ONNX)",
            switches=self.am.model_dump(),
            emotion_probe_stage=self.probe_stage,
            n_clips=len(self.clips),
            adherence=getattr(self, "adherence_note", "annotate's measures, corpus-fitted bins"),
            seconds={k: round(v, 2) for k, v in self.seconds.items()},
            note=self.note(),
        )

    def note(self) -> str:
        parts = [
            "ground_truth = the validation recordings; resynthesis = their codec codes decoded; each stage = "
            f"generated audio; WER by {getattr(self, 'asr_name', 'the ASR judge')}: read it against the "
            "ground_truth row (the judge's floor on this corpus) and the resynthesis row (the codec's "
            "ceiling)"
        ]
        if not self.codec_speaks:
            parts.append(
                "the codec is a random-init DAC: its decoder turns any codes into noise, so the resynthesis "
                "and stage rows are NOT speech and their scores only show what the judges give non-speech; "
                "use features.codec.kind: melvq (fitted on the corpus) or dac with official weights"
            )
        return "; ".join(parts)

    def table(self) -> list[dict]:
        cols = []
        for c in self.clips:
            # a row literal; `duplicates` pairs its shape with synthesis/cli.py's defaults (other fields)
            rec = dict(
                row=c.row,
                name=c.name,
                kind=c.kind,
                split=c.split,
                speaker=c.speaker,
                utterance=c.utterance,
                caption_source=c.caption_source,
                text=c.text,
                emotion_target=c.emotion_target,
                is_speech=c.is_speech,
                length_source=c.length_source,
                seconds=round(len(c.wav) / SR, 3),
                wav=c.wav_path,
            )
            rec.update(c.scores)
            cols.append(rec)
        return cols

    def _write_table(self, table: list[dict]) -> None:
        import pandas as pd

        from tristage.fsio import write_text

        write_text(self.ep.utterances, pd.DataFrame(table).to_csv(index=False))

    def _write_anchor_audio(self) -> None:
        import soundfile as sf

        from tristage.fsio import atomic_path

        for c in self.clips:
            if c.row in (GROUND_TRUTH, RESYNTHESIS):
                with atomic_path(Path(self.ep.samples_dir) / c.wav_path, suffix=".wav") as tmp:
                    sf.write(tmp, np.clip(c.wav, -1.0, 1.0), SR, format="WAV", subtype="PCM_16")

    def _plot(self, rows: dict[str, dict]) -> Path:
        from tristage.evaluation.judges.plot import audio_judges_plot

        return audio_judges_plot(Path(self.ep.plots_dir) / "audio_judges.png", rows, self.codec_speaks)
