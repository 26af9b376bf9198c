#!/usr/bin/env bash
# One-shot GPU check for tristage (device machine: one H100, no network). From the repo root:
#     bash benchmarks/gpucheck/run.sh            (carry .whl: the wheels of the packages that machine lacks, install.sh)
# Every step runs under its own `timeout`; a failing or hanging step does not stop the next.
# Everything goes to $OUT/gpucheck.log (a header per step, its exit status), a summary to
# $OUT/summary.tsv. Sum of the step limits: 360 s (+1 s kill grace each, +5 s nvidia-smi at the end).
# Local dry run (no wheels, CPU): GPUCHECK_SKIP_INSTALL=1 OUT=/tmp/x bash benchmarks/gpucheck/run.sh
set -u
cd "$(dirname "$0")/../.." || exit 2
ROOT=$PWD
OUT=${OUT:-${TMPDIR:-/tmp}/gpucheck}
export OUT
mkdir -p "$OUT"
LOG=$OUT/gpucheck.log
SUM=$OUT/summary.tsv
: >"$LOG"
printf 'step\tstatus\tseconds\tlimit\n' >"$SUM"
PY=${PY:-python3}
T0=$(date +%s)

export DVC_NO_ANALYTICS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MLFLOW_DISABLE_TELEMETRY=true \
    PREFECT_SERVER_ANALYTICS_ENABLED=false PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false \
    PYTHONDONTWRITEBYTECODE=1

log() { echo "$*" | tee -a "$LOG"; }

# step NAME LIMIT_S CMD...: run CMD under `timeout`, output tee'd into the log, status recorded
step() {
    local name=$1 limit=$2 rc t
    shift 2
    log ""
    log "===== [$(date -u +%H:%M:%S)] STEP $name (limit ${limit}s): $*"
    t=$(date +%s)
    timeout -k 1 "$limit" "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    t=$(($(date +%s) - t))
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        log "===== STEP $name: TIMEOUT after ${t}s (rc=$rc)"
    else
        log "===== STEP $name: exit $rc after ${t}s"
    fi
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$t" "$limit" >>"$SUM"
    return 0
}

# ---- 0. wheels (only packages the device lacks) -> /tmp/site --------------------------------
if [ "${GPUCHECK_SKIP_INSTALL:-0}" = 1 ]; then
    log "GPUCHECK_SKIP_INSTALL=1: wheels not installed (local dry run)"
else
    step 0-install-wheels 15 env PY="$PY" bash benchmarks/gpucheck/install.sh
fi
export PYTHONPATH=/tmp/site:$ROOT/src:$ROOT${GPUCHECK_PYTHONPATH_EXTRA:+:$GPUCHECK_PYTHONPATH_EXTRA}
log "PYTHONPATH=$PYTHONPATH; python: $(command -v "$PY"); OUT=$OUT"

# ---- 0b. the project's own install check (Makefile: `tristage.envcheck --fix`): does `import dac` work?
# It changes nothing when it does; otherwise it moves torchaudio's unloadable lib/*.so aside, as `make
# install` does (the device's torchaudio 2.11.0 is built for its torch 2.11, so this should say "works").
step 0b-envcheck 20 "$PY" -m tristage.envcheck --fix

# ---- 1. the GPU and torch ------------------------------------------------------------------------
step 1-env 15 bash -c "nvidia-smi -L; nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total \
--format=csv; echo CUDA_VISIBLE_DEVICES=\${CUDA_VISIBLE_DEVICES-unset}; nproc; $PY -c \"import torch; \
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available(), \
torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no device')\""

# ---- 2. every module the steps below import (a missing wheel shows here first) -----------------
step 2-imports 20 "$PY" benchmarks/gpucheck/imports.py

# ---- 3. the gpu-marked tests (skipped without CUDA) ----------------------------------------------
step 3-pytest-gpu 60 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_device.py \
    --junitxml="$OUT/pytest-gpu.xml"

# ---- 4-7. benchmarks, quick settings, CUDA rows ----------------------------------------------------
step 4-bench-features 30 "$PY" -m benchmarks.features --quick
step 5-bench-training 100 "$PY" -m benchmarks.training --quick --cuda
step 6-bench-synthesis 40 "$PY" -m benchmarks.synthesis --quick --cuda
step 7-bench-caption-vectors 45 "$PY" -m benchmarks.caption_vectors --quick --device cuda

# ---- 8. GPU scheduling without Prefect's server (flows/orchestration/gpu.py) ----------------------
step 8-sched 15 "$PY" benchmarks/gpucheck/sched.py

timeout 5 nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || true
log ""
log "===== SUMMARY (total $(($(date +%s) - T0))s)"
column -t "$SUM" 2>/dev/null | tee -a "$LOG" || tee -a "$LOG" <"$SUM"
exit 0
