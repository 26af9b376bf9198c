#!/usr/bin/env bash
# Install the carried wheels (only packages the device lacks) into /tmp/site, without deps or network.
set -euo pipefail
PY=${PY:-python3}
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
# pydantic 2.14 / pydantic-core 2.50 need typing_extensions >= 4.16: add the carried one only if the
# device's is older (a newer typing_extensions is backward compatible; otherwise the device's stays).
if ! "$PY" -c "import sys, importlib.metadata as m; from packaging.version import Version as V; \
v = m.version('typing_extensions'); print('device typing_extensions', v); sys.exit(V(v) < V('4.16.0'))"; then
    echo "device typing_extensions older than 4.16.0: installing the carried 4.16.0"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/cond/*.whl
fi
rm -rf /tmp/site/tests  # descript-audio-codec ships its own top-level `tests` package: not ours, not needed
ls /tmp/site | grep -v dist-info | tr '\n' ' '; echo
# the versions in effect (carried first on PYTHONPATH), for the report
PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} "$PY" -m pip list --format=freeze >"${OUT:-/tmp}/pip-freeze.txt" 2>&1 || true
