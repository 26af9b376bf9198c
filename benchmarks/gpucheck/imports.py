"""Import every module the GPU-check steps need; print versions and where each package comes from.
Exit 1 if any import fails (so a missing or broken wheel shows at once)."""
from __future__ import annotations

import importlib
import importlib.metadata as md
import sys
import time
import traceback

MODULES = [
    # third-party, carried (/tmp/site) or on the device
    "torch", "torchaudio", "numpy", "scipy", "numba", "sklearn", "pandas", "pyarrow", "safetensors", "yaml",
    "tokenizers", "transformers", "pydantic", "soundfile", "soxr", "librosa", "audiotools", "dac", "filelock",
    "pytest", "matplotlib", "tensorboard",
    # the project: what tests/test_device.py and the benchmarks import
    "tristage.environment", "tristage.device", "tristage.config", "tristage.errors",
    "tristage.features", "tristage.features.config", "tristage.features.codec", "tristage.features.mel",
    "tristage.features.extract",
    "tristage.model.config", "tristage.model.tts", "tristage.testing.fakes",
    "tristage.training.trainer", "tristage.training.data",
    "tristage.synthesis.folder",
    "tristage.captions.build", "tristage.captions.encoder", "tristage.captions.lexicon",
    "tristage.captions.tokenize", "tristage.captions.vectors", "tristage.captions.config",
    "tristage.captions.peft", "tristage.captions.contextual",
    "tristage.corpus.build", "tristage.corpus.text",
    "flows.orchestration.gpu",
    "benchmarks.features", "benchmarks.training", "benchmarks.synthesis", "benchmarks.caption_vectors",
]
DISTS = ["torch", "torchaudio", "numpy", "scipy", "numba", "llvmlite", "scikit-learn", "pandas", "pyarrow",
         "transformers", "tokenizers", "huggingface-hub", "safetensors", "protobuf", "tensorboard",
         "typing_extensions", "filelock", "pytest", "matplotlib",
         # carried
         "descript-audio-codec", "descript-audiotools", "librosa", "soundfile", "soxr", "cffi", "pydantic",
         "pydantic-core", "argbind", "julius", "audioread", "pooch"]

failed = []
t0 = time.perf_counter()
for name in MODULES:
    try:
        importlib.import_module(name)
    except Exception:  # noqa: BLE001 - report every failure, go on
        failed.append(name)
        print(f"IMPORT FAILED: {name}\n{traceback.format_exc(limit=-4)}", flush=True)
print(f"imported {len(MODULES) - len(failed)}/{len(MODULES)} modules in {time.perf_counter() - t0:.1f} s")
for d in DISTS:
    try:
        dist = md.distribution(d)
        print(f"  {d:24s} {dist.version:16s} {dist.locate_file('')}")
    except md.PackageNotFoundError:
        print(f"  {d:24s} NOT INSTALLED")
if "torchaudio" in sys.modules:
    try:
        from torchaudio._extension import _IS_TORCHAUDIO_EXT_AVAILABLE as ext  # noqa: N811
        print(f"torchaudio extension loaded: {ext}")
    except Exception as e:  # noqa: BLE001 - private API; informational only
        print(f"torchaudio extension: unknown ({type(e).__name__})")
print(f"failed: {failed}")
sys.exit(1 if failed else 0)
