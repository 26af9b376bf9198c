"""The fine-tune's report: before (base model) vs after (fine-tuned) on the user's held-out utterances.

    summary = run_report(fp, work)   # <work>/report/: finetune.json, finetune.md, finetune.png, audio/

For each held-out utterance, one request to each model: its text, its caption (the annotate stage's,
binned with the base corpus's bins), one of the user's TRAINING clips as the speaker reference (drawn
by `report.seed`, the same clip for both models), sampled with the same seed. Rows:
- `ground_truth`: the held-out recording itself (what the judges give the user's real voice);
- `resynthesis`: that recording through the model folder's codec (the ceiling of any model);
- `before`: the base model; `after`: the fine-tuned one.
The judges are evaluate's (`evaluation/judges/`): ASR -> `wer` / `cer`; `speaker_sim` = cosine of the
speaker embedding to the user's voice (the mean embedding of the user's training clips); DNSMOS
`dnsmos_ovrl`; `pitch_agreement` / `speed_agreement` (the audio measured and binned with the annotate
stage's code and bins vs the caption's values). `leakage`: a fresh speaker probe on each model's emotion
vectors of the user's and the base folder's stored voices (`evaluation/probes.probe_accuracy`): how much
speaker identity the emotion vector carries (the `finetune` preset leaves the emotion path as it was).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from tristage.finetune.config import FinetuneParams

log = logging.getLogger("tristage.finetune")
SR = 16000  # every judge listens at 16 kHz
ROWS = ("ground_truth", "resynthesis", "before", "after")
KEYS = ("speaker_sim", "wer", "cer", "dnsmos_ovrl", "pitch_agreement", "speed_agreement")
HIGHER_IS_BETTER = {"speaker_sim": True, "wer": False, "cer": False, "dnsmos_ovrl": True,
                    "pitch_agreement": True, "speed_agreement": True}
REPORT = "report"
MAX_PROFILE_CLIPS = 20  # training clips the user's voice profile (mean speaker embedding) is taken from


@dataclasses.dataclass
class Item:
    """One held-out utterance and what it is judged against."""

    id: str
    text: str
    caption: str
    recording: Path
    reference: Path  # the training clip that is the speaker reference
    seconds: float
    gender: str | None = None
    pitch: str | None = None
    speed: str | None = None


def _text(v) -> str | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) or str(v) == "" else str(v)


def items(work: Path, split: dict, seed: int) -> list[Item]:
    """The held-out utterances from the annotated manifest, each with a training clip as reference."""
    from tristage.data.manifest import read_prepared, resolve_audio

    path = Path(work) / "annotated" / "manifest.parquet"
    man = read_prepared(path).drop_duplicates("id").set_index("id")
    man.index = man.index.astype(str)
    train = sorted(i for i in map(str, split["train"]) if i in man.index)
    out = []
    for uid in split["heldout"]:
        r = man.loc[str(uid)]
        ref = train[np.random.default_rng([abs(seed), zlib.crc32(str(uid).encode())]).integers(len(train))]
        out.append(Item(id=str(uid), text=str(r["text"]), caption=_text(r.get("caption")) or "",
                        recording=resolve_audio(path, str(r["audio"])),
                        reference=resolve_audio(path, str(man.loc[ref, "audio"])),
                        seconds=float(r.get("duration") or 0.0) or 1.0, gender=_text(r.get("gender")),
                        pitch=_text(r.get("pitch")), speed=_text(r.get("speed"))))
    return out


def to_16k(path_or_wav, sr: int | None = None) -> np.ndarray:
    from tristage.evaluation.audio import to_16k as resample
    from tristage.synthesis.api import load_audio

    wav, sr = load_audio(path_or_wav) if sr is None else (path_or_wav, sr)
    return resample(wav, sr)


def synthesize(folder: Path, its: list[Item], fp: FinetuneParams) -> tuple[list[np.ndarray], float]:
    """Each item spoken by the model folder (16 kHz), and the seconds it took."""
    from tristage.synthesis.api import TTS, Request

    rp = fp.report
    tts = TTS.from_pretrained(folder)
    t0 = time.perf_counter()
    reqs = [Request(text=it.text, caption=it.caption, speaker_ref=str(it.reference), seed=rp.seed,
                    temperature=rp.temperature, top_k=rp.top_k,
                    max_seconds=min(tts.max_seconds, rp.length_factor * it.seconds)) for it in its]
    res = tts.synthesize_batch(reqs, warn=False)
    return [to_16k(r.wav, r.sample_rate) for r in res], time.perf_counter() - t0


def resynthesize(folder: Path, its: list[Item]) -> list[np.ndarray]:
    from tristage.synthesis.api import TTS

    tts = TTS.from_pretrained(folder)
    return [to_16k(*tts.resynthesize(str(it.recording))) for it in its]


class Judges:
    """evaluate's audio judges, as `finetune.report` switches them on; `profile`: the user's voice."""

    def __init__(self, fp: FinetuneParams, work: Path, profile_clips: list[Path]):
        from tristage.evaluation.judges.adherence import AdherenceJudge
        from tristage.evaluation.judges.asr import load_asr
        from tristage.evaluation.judges.quality import DNSMOS
        from tristage.evaluation.judges.speaker import load_speaker_encoder

        rp, bins = fp.report, Path(work) / "annotated" / "bins.json"
        self.asr = load_asr(rp.asr, "cpu", None, rp.asr_judge) if rp.intelligibility else None
        self.encoder = load_speaker_encoder(rp.speaker_encoder) if rp.speaker_sim else None
        self.mos = DNSMOS() if rp.dnsmos else None
        self.adherence = AdherenceJudge.from_file(bins) if rp.caption_adherence and bins.is_file() else None
        self.profile = None
        if self.encoder is not None and profile_clips:
            emb = np.mean([self.encoder(to_16k(p)) for p in profile_clips[:MAX_PROFILE_CLIPS]], axis=0)
            self.profile = emb / max(float(np.linalg.norm(emb)), 1e-12)

    def names(self) -> dict[str, Any]:
        return dict(asr=getattr(self.asr, "name", None), speaker_encoder=getattr(self.encoder, "name", None),
                    quality=getattr(self.mos, "name", None), adherence=getattr(self.adherence, "name", None),
                    speaker_sim="cosine to the mean embedding of the user's training clips")

    def __call__(self, wav: np.ndarray, it: Item) -> dict[str, Any]:
        from tristage.evaluation.judges.adherence import agreement
        from tristage.evaluation.judges.speaker import cosine
        from tristage.evaluation.judges.text import error_rates

        out: dict[str, Any] = {}
        if self.asr is not None:
            hyp = self.asr(wav)
            out.update(transcript=hyp, **dict(zip(("wer", "cer"), error_rates(it.text, hyp))))
        if self.profile is not None:
            out["speaker_sim"] = cosine(self.encoder(wav), self.profile)
        if self.mos is not None:
            out.update(self.mos(wav))
        if self.adherence is not None:
            res = self.adherence(wav, it.text, it.gender)
            for attr, want in (("pitch", it.pitch), ("speed", it.speed)):
                out.update({f"{attr}_requested": want, f"{attr}_measured": res.get(f"{attr}_measured"),
                            f"{attr}_agreement": agreement(want, res.get(f"{attr}_measured"))})
        return out


def summarize(clips: list[dict]) -> dict[str, Any]:
    """The mean of each figure over a row's clips (None where nothing was measured)."""
    out: dict[str, Any] = {}
    for k in KEYS:
        v = [float(c[k]) for c in clips if c.get(k) is not None and math.isfinite(float(c[k]))]
        out[k] = round(float(np.mean(v)), 4) if v else None
    out["n_clips"] = len(clips)
    return out


def _crops(mel, width: int, n: int) -> list:
    """Up to `n` windows of `width` frames, evenly spread over the mel (the whole mel when shorter)."""
    T = int(mel.shape[0])
    if T <= width:
        return [mel]
    starts = np.linspace(0, T - width, min(n, 1 + (T - width) // max(width // 2, 1))).astype(int)
    return [mel[s : s + width] for s in sorted(set(starts.tolist()))]


def leakage_probe(folders: dict[str, Path], work: Path, base: Path, speaker: str, seed: int) -> dict:
    """A fresh speaker probe on each model's emotion vectors: the user's utterances (from the features) and
    the base folder's stored voices, a few crops each -> {model: {speaker_probe_acc, chance, n}}."""
    import torch

    from tristage.evaluation.probes import probe_accuracy
    from tristage.features.store import FeatureStore
    from tristage.model.folder import load_folder, load_references, read_info

    info = read_info(base)
    width = max(8, int(info["max_ref_frames"]) // 2)
    store = FeatureStore(Path(work) / "features")
    mels = [(speaker, torch.as_tensor(store.load(uid)[0]).float()) for uid in map(str, store.ids)]
    refs = sorted(load_references(base, info).items())
    mels += [(name, mel.float()) for name, mel in refs if name != speaker]
    crops = [(spk, c) for spk, mel in mels for c in _crops(mel, width, 4)]
    out = {}
    for name, folder in folders.items():
        model = load_folder(folder)[0]
        with torch.no_grad():
            vecs = np.stack([model.emotion_vector(c[None]).float().numpy()[0] for _, c in crops])
        res = probe_accuracy(vecs, [spk for spk, _ in crops], seed=seed, test_fraction=0.3)
        out[name] = (dict(speaker_probe_acc=round(res.accuracy, 4), chance=round(res.chance, 4),
                          n_vectors=len(crops), n_speakers=res.n_classes) if res else None)
    return out


def delta(rows: dict[str, dict]) -> dict[str, Any]:
    """after - before per figure (None where either is missing)."""
    b, a = rows.get("before", {}), rows.get("after", {})
    both = [k for k in KEYS if a.get(k) is not None and b.get(k) is not None]
    return {k: (round(a[k] - b[k], 4) if k in both else None) for k in KEYS}


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def markdown(result: dict) -> str:
    """finetune.md: what was done, the figures (a row per judge, a column per row), the utterances."""
    rows, d, t = result["rows"], result["delta"], result["train"]
    lines = [f"# Fine-tune: {result['speaker']}", "",
             f"Base model `{result['base']}` ({result['base_stage']}), `{result['preset']}` preset, "
             f"{t.get('steps')} steps (best step {t.get('best_step')}), {result['n_train']} training "
             f"utterances, "
             f"{len(result['heldout'])} held out for this report. Validation mel_loss "
             f"{_fmt(t.get('initial_val_mel_loss'))} -> {_fmt(t.get('val_mel_loss'))}; training took "
             f"{_fmt(t.get('seconds'))} s.", "",
             "| figure | " + " | ".join(ROWS) + " | after - before |", "|---" * (len(ROWS) + 2) + "|"]
    for k in KEYS:
        better = "higher" if HIGHER_IS_BETTER[k] else "lower"
        lines.append(f"| {k} ({better} is better) | " + " | ".join(_fmt(rows[r].get(k)) for r in ROWS)
                     + f" | {_fmt(d.get(k))} |")
    lines += ["", "ground_truth = the held-out recordings; resynthesis = them through the model's codec (the "
              "ceiling); before = the base model, after = the fine-tuned one, each given one of the user's "
              "training clips as the speaker reference. " + result["judges"]["speaker_sim"] + ".", ""]
    leak = result.get("leakage") or {}
    if leak:
        lines += ["Speaker leakage into the emotion vector (a fresh speaker probe; chance = the majority "
                  "class): " + "; ".join(f"{m}: {_fmt((v or {}).get('speaker_probe_acc'))} (chance "
                                         f"{_fmt((v or {}).get('chance'))})" for m, v in leak.items()), ""]
    lines += ["| utterance | text | before: transcript | after: transcript | audio |",
              "|---|---|---|---|---|"]
    for uid, text in zip(result["heldout"], result["texts"]):
        tr = {c["row"]: c.get("transcript", "") for c in result["clips"] if c["id"] == uid}
        lines.append(f"| {uid} | {text} | {tr.get('before', '')} | {tr.get('after', '')} | "
                     + " ".join(f"[{r}](audio/{r}/{uid}.wav)" for r in ROWS) + " |")
    lines += ["", "![before vs after](finetune.png)", ""]
    return "\n".join(lines)


def chart(path: Path, result: dict, history: list[dict]) -> None:
    """finetune.png: one panel per figure (a bar per row), and the training curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tristage.fsio import save_figure

    fig, axes = plt.subplots(2, 4, figsize=(14, 6))
    colors = ("#999999", "#cccccc", "#d95f02", "#1b9e77")
    for ax, k in zip(axes.flat, KEYS):
        vals = [result["rows"][r].get(k) for r in ROWS]
        ax.bar(ROWS, [0 if v is None else v for v in vals], color=colors)
        ax.set_title(f"{k} ({'higher' if HIGHER_IS_BETTER[k] else 'lower'} is better)", fontsize=9)
        ax.tick_params(axis="x", labelsize=7, rotation=20)
    ax = axes.flat[len(KEYS)]
    ax.set_title("training (val_mel_loss, mel_loss)", fontsize=9)
    for key, style in (("mel_loss", "-"), ("val_mel_loss", "o-")):
        pts = [(r["step"], r[key]) for r in history if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), style, label=key, markersize=3)
    ax.legend(fontsize=7)
    axes.flat[-1].axis("off")
    n = len(result["heldout"])
    fig.suptitle(f"fine-tune {result['speaker']}: before vs after on {n} held-out utterances")
    fig.tight_layout()
    save_figure(fig, path, dpi=90)


def write_audio(folder: Path, its: list[Item], wavs: dict[str, list[np.ndarray]]) -> None:
    import soundfile as sf

    for row, clips in wavs.items():
        (folder / "audio" / row).mkdir(parents=True, exist_ok=True)
        for it, wav in zip(its, clips):
            sf.write(str(folder / "audio" / row / f"{it.id}.wav"), np.clip(wav, -1, 1), SR, subtype="PCM_16")


def _wavs(fp: FinetuneParams, work: Path, its: list[Item]) -> tuple[dict[str, list[np.ndarray]], dict]:
    """Every row's audio (16 kHz) and the seconds the two models took to speak."""
    wavs = {"ground_truth": [to_16k(it.recording) for it in its],
            "resynthesis": resynthesize(work / "model", its)}
    wavs["before"], t_before = synthesize(Path(fp.model), its, fp)
    wavs["after"], t_after = synthesize(work / "model", its, fp)
    return wavs, dict(synthesis_before_s=round(t_before, 2), synthesis_after_s=round(t_after, 2))


def run_report(fp: FinetuneParams, work: Path) -> dict:
    """The step -> the figures for metrics/report.json (`before/<k>`, `after/<k>`, `delta/<k>`)."""
    from tristage.environment import deterministic_torch
    from tristage.fsio import atomic_dir, read_json, write_json, write_text
    from tristage.model.folder import read_info

    work, t0 = Path(work), time.perf_counter()
    deterministic_torch(fp.report.threads)
    split, base_info = read_json(work / "split.json"), read_info(fp.model)
    its = items(work, split, fp.report.seed)
    wavs, seconds = _wavs(fp, work, its)
    profile = sorted({it.reference for it in its} | set(_train_recordings(work, split)))
    judges = Judges(fp, work, profile)
    clips = [dict(row=row, id=it.id, **judges(w, it)) for row in ROWS for it, w in zip(its, wavs[row])]
    rows = {row: summarize([c for c in clips if c["row"] == row]) for row in ROWS}
    leakage = (leakage_probe({"before": Path(fp.model), "after": work / "model"}, work, Path(fp.model),
                             fp.speaker, fp.seed) if fp.report.leakage_probe else {})
    training = read_json(work / "model" / "training.json")
    result = dict(speaker=fp.speaker, base=Path(fp.model).name, base_stage=base_info.get("stage"),
                  preset=fp.train.preset, n_train=len(split["train"]), heldout=[it.id for it in its],
                  texts=[it.text for it in its], train={k: v for k, v in training.items() if k != "history"},
                  rows=rows, delta=delta(rows), leakage=leakage, judges=judges.names(), clips=clips,
                  seconds=dict(seconds, report_s=round(time.perf_counter() - t0, 2)))
    result["speaker_sim_raised"] = bool((result["delta"].get("speaker_sim") or 0) > 0)
    with atomic_dir(work / REPORT) as tmp:
        write_json(tmp / "finetune.json", result)
        write_text(tmp / "finetune.md", markdown(result))
        chart(tmp / "finetune.png", result, training.get("history", []))
        write_audio(tmp, its, wavs)
    log.info("finetune report: speaker_sim %s -> %s, wer %s -> %s", _fmt(rows["before"]["speaker_sim"]),
             _fmt(rows["after"]["speaker_sim"]), _fmt(rows["before"]["wer"]), _fmt(rows["after"]["wer"]))
    figures = {f"{row}/{k}": rows[row][k] for row in ("before", "after") for k in KEYS}
    figures.update({f"delta/{k}": v for k, v in result["delta"].items()})
    return dict(figures, speaker_sim_raised=result["speaker_sim_raised"])


def _train_recordings(work: Path, split: dict) -> list[Path]:
    """The user's training recordings (the voice profile), in id order."""
    from tristage.data.manifest import read_prepared, resolve_audio

    path = Path(work) / "annotated" / "manifest.parquet"
    man = read_prepared(path, columns=["id", "audio"])
    keep = set(map(str, split["train"]))
    pairs = sorted(zip(man["id"].astype(str), man["audio"]))
    return [resolve_audio(path, str(a)) for i, a in pairs if i in keep]
