#!/usr/bin/env bash
# GPU node check of the information-gain forward: exactness (bf16/fp32), speed and memory, attention
# backends. Needs only torch + transformers; runs from the source tree (nothing installed).
#   bash scripts/gpu_check.sh                     # CUDA, Qwen2.5-7B dims, 4 layers (a few minutes)
#   bash scripts/gpu_check.sh --cpu               # tiny shapes on the CPU (seconds; what CI runs)
#   bash scripts/gpu_check.sh --out FILE.json     # report path (default outputs/gpu_check.json)
# Every other option goes to scripts/gpu_check.py (--help lists them). The run is cut at
# GPU_CHECK_TIMEOUT seconds (default 470); the report is rewritten after each section.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
args=("$@")
has_out=false
for a in "$@"; do
  [[ "$a" == --out || "$a" == --out=* ]] && has_out=true
done
if ! $has_out; then
  mkdir -p outputs
  args+=(--out outputs/gpu_check.json)
fi
limit="${GPU_CHECK_TIMEOUT:-470}"
if command -v timeout >/dev/null 2>&1; then
  exec timeout "$limit" "${PYTHON:-python}" -u scripts/gpu_check.py "${args[@]}"
fi
exec "${PYTHON:-python}" -u scripts/gpu_check.py "${args[@]}"
