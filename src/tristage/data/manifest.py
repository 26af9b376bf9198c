"""The prepared manifest: the one table every stage after `prepare` reads.

`data/prepared/manifest.parquet`, one row per usable utterance:

    id          string   unique
    audio       string   path relative to the prepared manifest's folder (absolute if
                         it cannot be made relative); resolve with `resolve_audio`
    text        string   normalised transcript
    speaker     string
    caption     string   free-form style description ("" when absent)
    emotion     string   or null
    duration    float64  seconds, from the audio header
    sample_rate int32    from the audio header
    language    string   or null
    gender, pitch, speed, accent, modulation, quality: string or null (attribute columns)
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

ATTRIBUTE_COLUMNS = ("gender", "pitch", "speed", "accent", "modulation", "quality")
REQUIRED_COLUMNS = ("audio", "text", "speaker")
OPTIONAL_COLUMNS = ("id", "caption", "emotion", "duration", "language") + ATTRIBUTE_COLUMNS
PREPARED_COLUMNS = ("id", "audio", "text", "speaker", "caption", "emotion", "duration", "sample_rate",
                    "language") + ATTRIBUTE_COLUMNS


def prepared_schema():
    import pyarrow as pa

    types = {"duration": pa.float64(), "sample_rate": pa.int32()}
    return pa.schema([(c, types.get(c, pa.string())) for c in PREPARED_COLUMNS])


def relative_audio(manifest_dir: Path, audio: Path) -> str:
    """How the prepared manifest stores an audio path (relative to its own folder)."""
    try:
        return os.path.relpath(audio, manifest_dir)
    except ValueError:  # another drive (Windows)
        return str(audio)


def resolve_audio(manifest_path: str | os.PathLike, audio: str) -> Path:
    """Absolute path of an `audio` value read from the manifest at `manifest_path`."""
    p = Path(audio)
    return p if p.is_absolute() else (Path(manifest_path).resolve().parent / p).resolve()


def read_prepared(path: str | os.PathLike, columns: Sequence[str] | None = None):
    """The prepared manifest as a pandas DataFrame (optionally only some columns)."""
    import pyarrow.parquet as pq

    from tristage.errors import UserError

    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"{path}: prepared manifest not found; run the `prepare` stage first (dvc repro prepare)"
        )
    return pq.read_table(path, columns=list(columns) if columns else None).to_pandas()
