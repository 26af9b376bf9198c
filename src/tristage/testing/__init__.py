"""Test doubles and tiny corpora, in one package (for the tests, the benchmarks and trying stages).

- `tristage.testing.corpus`: tone corpora in the contract's manifest format (`write_tone_corpus`),
  prepared manifests (`write_prepared`) and feature stores (`write_feature_store`);
- `tristage.testing.fakes`: in-memory stand-ins for the upstream stages (features store, caption
  table, caption PEFT) with the same interfaces, for the trainer alone (`fake_sources`,
  `write_tiny_params`; `python -m tristage.testing.fakes STAGE --params P` runs a stage on them).
"""
from tristage.testing.corpus import EMOTIONS, write_feature_store, write_prepared, write_tone_corpus

__all__ = ["EMOTIONS", "write_feature_store", "write_prepared", "write_tone_corpus"]
