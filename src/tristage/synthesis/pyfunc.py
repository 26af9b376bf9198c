"""The trained model as an MLflow pyfunc model.

    log_synthesis_model("models/stage3", "model", register_as="tristage-tts")   # the evaluate stage
    model = mlflow.pyfunc.load_model("runs:/<run id>/model")
    out = model.predict(pd.DataFrame([{"text": "Hello.", "caption": "A woman speaks slowly.",
                                       "speaker_ref": "spk03"}]))
    out["wav"][0]   # bytes of a 16-bit WAV file; also sample_rate, duration, n_frames, caption

Input columns: `text` (required), `caption`, `speaker_ref` and `emotion_ref` (a path to audio on
the serving machine, or a reference name stored in the model folder, see `TTS.speakers`); optional
`seed`, `temperature`, `max_seconds`. The whole model folder is the model's artifact, so the
MLflow model needs nothing from the training workspace.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import pandas as pd  # the predict type hints, resolved by MLflow when the class is defined

log = logging.getLogger(__name__)
# The model's code (MLflow "models from code"): the file MLflow copies into the logged model and runs to get
# the model object, so nothing is pickled (an object passed as `python_model` is pickled with CloudPickle,
# and MLflow warns about it)
MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")

INPUT_COLUMNS = ("text", "caption", "speaker_ref", "emotion_ref")
# what the model's environment needs besides tristage itself (listed: no slow inference at log time)
PIP_REQUIREMENTS = ["torch", "numpy", "pandas", "soundfile", "safetensors", "librosa", "descript-audio-codec"]
OPTIONAL = {"seed": int, "temperature": float, "max_seconds": float}

try:  # mlflow is a dependency, but importing it costs a second: only the class needs it
    import mlflow.pyfunc as _pyfunc

    _Base = _pyfunc.PythonModel
except Exception:  # pragma: no cover - mlflow missing
    _Base = object


class TTSPyfunc(_Base):  # type: ignore[misc,valid-type]
    def load_context(self, context) -> None:
        from tristage.synthesis.api import TTS

        self.tts = TTS.from_pretrained(context.artifacts["model"])

    # typed: MLflow warns about a predict without type hints (a DataFrame hint: the signature below validates)
    def predict(self, context, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        import soundfile as sf

        from tristage.synthesis.api import Request

        rows = model_input.to_dict("records") if hasattr(model_input, "to_dict") else list(model_input)
        reqs = []
        for r in rows:

            def get(key, default=None, _r=r):
                v = _r.get(key, default)
                return default if v is None or (isinstance(v, float) and v != v) or v == "" else v

            kw = {k: t(get(k)) for k, t in OPTIONAL.items() if get(k) is not None}
            reqs.append(
                Request(
                    text=str(get("text", "")),
                    caption=str(get("caption", "")),
                    speaker_ref=get("speaker_ref"),
                    emotion_ref=get("emotion_ref"),
                    **kw,
                )
            )
        out = []
        for res in self.tts.synthesize_batch(reqs):
            buf = io.BytesIO()
            sf.write(buf, res.wav, res.sample_rate, format="WAV", subtype="PCM_16")
            out.append(
                dict(
                    wav=buf.getvalue(),
                    sample_rate=res.sample_rate,
                    duration=res.duration,
                    n_frames=res.n_frames,
                    caption=res.caption,
                )
            )
        return pd.DataFrame(out, columns=["wav", "sample_rate", "duration", "n_frames", "caption"])


def signature():
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    inputs = Schema(
        [
            ColSpec("string", "text"),
            ColSpec("string", "caption", required=False),
            ColSpec("string", "speaker_ref", required=False),
            ColSpec("string", "emotion_ref", required=False),
            ColSpec("long", "seed", required=False),
            ColSpec("double", "temperature", required=False),
            ColSpec("double", "max_seconds", required=False),
        ]
    )
    outputs = Schema(
        [
            ColSpec("binary", "wav"),
            ColSpec("long", "sample_rate"),
            ColSpec("double", "duration"),
            ColSpec("long", "n_frames"),
            ColSpec("string", "caption"),
        ]
    )
    return ModelSignature(inputs=inputs, outputs=outputs)


def input_example(folder: str | Path):
    from tristage.model.folder import load_references, read_info

    refs = sorted(load_references(folder, read_info(folder)))
    return pd.DataFrame(
        [
            dict(
                text="The quick brown fox jumps over the lazy dog.",
                caption="A female speaker with a high-pitched voice speaks quickly in a clean recording.",
                speaker_ref=refs[0] if refs else "",
                max_seconds=2.0,
            )
        ]
    )


def log_synthesis_model(folder: str | Path, artifact_path: str = "model", register_as: str | None = None):
    """Log the model folder as a pyfunc model into the ACTIVE MLflow run; returns the ModelInfo."""
    import mlflow

    folder = Path(folder)
    skip = {"checkpoints", "trainer_state.pt"}
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:  # the folder without its training checkpoints
        clean = Path(tmp) / folder.name
        shutil.copytree(folder, clean, ignore=lambda d, names: [n for n in names if n in skip])
        return mlflow.pyfunc.log_model(
            name=artifact_path,
            python_model=str(MODEL_CODE),  # TTSPyfunc, named by the code file (not pickled)
            artifacts={"model": str(clean)},
            signature=signature(),
            input_example=input_example(clean),
            registered_model_name=register_as,
            pip_requirements=PIP_REQUIREMENTS,
        )
