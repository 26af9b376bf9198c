"""The one list of environment defaults that keep every tool offline and quiet.

Stages (`tristage.stage`), the Prefect flow's `dvc` calls, `make serve`'s Prefect server and
the tests all take them from here; an explicit setting in the user's environment wins.
"""
from __future__ import annotations

import os
from typing import MutableMapping

QUIET_ENV: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",                       # no hub downloads at run time
    "TRANSFORMERS_OFFLINE": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "TOKENIZERS_PARALLELISM": "false",           # no fork warnings from the tokenizers library
}


def apply_quiet_env(environ: MutableMapping[str, str] | None = None) -> MutableMapping[str, str]:
    """Fill in `QUIET_ENV` where `environ` (default `os.environ`) has no value; return it."""
    env = os.environ if environ is None else environ
    for key, value in QUIET_ENV.items():
        env.setdefault(key, value)
    return env
