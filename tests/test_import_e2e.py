"""Bring your own corpus, end to end: `tristage import ljspeech` on a tiny LJSpeech-style folder made here
with espeak-ng, then `dvc repro` (shrunk, in a fresh copy of the repo) annotates, captions and trains
on it."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import copy_repo, project_env, shrink_params


def make_ljspeech(root, n: int = 24) -> None:
    """`n` utterances of one espeak voice at varied pace and pitch: metadata.csv + wavs/, no captions."""
    import soundfile as sf

    from tristage.corpus.espeak import Espeak
    from tristage.corpus.text import sentence

    tts = Espeak.get()
    rng = np.random.default_rng(0)
    (root / "wavs").mkdir(parents=True)
    lines = []
    for i in range(n):
        text = sentence(rng)
        x = tts.synth(
            text, "en-us+f1", rate=int(rng.choice([130, 175, 230])), pitch=int(rng.choice([35, 50, 65]))
        )
        sf.write(root / "wavs" / f"LJ001-{i:04d}.wav", x.astype(np.float32) / 32768.0, tts.sample_rate)
        lines.append(f"LJ001-{i:04d}|{text}|{text}")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.mark.slow
@pytest.mark.long
def test_import_ljspeech_then_dvc_repro_trains_with_generated_captions(tmp_path):
    repo = copy_repo(tmp_path / "repo")
    shrink_params(repo / "params.yaml", {"prepare": {"manifest": "imported/manifest.jsonl"},
                                         "speaker_mapping": {"min_samples": 2},
                                         "annotate": {"shard_size": 8, "min_group": 5}})
    make_ljspeech(tmp_path / "LJSpeech-1.1")
    env = project_env(PYTHONPATH=f"{repo / 'src'}:{repo}")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "tristage.cli",
            "import",
            "ljspeech",
            str(tmp_path / "LJSpeech-1.1"),
            "--out",
            str(repo / "imported"),
        ],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["rows"] == 24

    r = subprocess.run(["dvc", "repro", "stage3"], cwd=repo, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    metrics = lambda s: json.loads((repo / "metrics" / f"{s}.json").read_text())
    assert metrics("prepare")["rows_kept"] == 24
    ann = metrics("annotate")
    assert ann["n_measured"] == 24 and ann["captions_written"] == 24 and ann["filled"]["speed"] == 24

    import pandas as pd

    df = pd.read_parquet(repo / "data/annotated/manifest.parquet")
    assert len(df) == 24 and (df["caption"].str.len() > 10).all() and df["caption"].nunique() > 12
    assert df["speed"].notna().all() and df["pitch"].notna().all() and (df["speaker"] == "LJ").all()
    assert metrics("features")["n_utterances"] == 24
    assert metrics("caption_vectors")["n_heldout_captions"] >= 1
    for stage in ("stage1", "stage2", "stage3"):
        assert (repo / "models" / stage / "model.safetensors").is_file()
        assert np.isfinite(metrics(stage)["mel_loss"])
