#!/usr/bin/env bash
# Install IGPO for this machine. CPU torch goes in first so that verl's dependency on torch does not
# pull a multi-GB CUDA build. Usage: bash scripts/install.sh [--test] [--gpu]
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
for arg in "$@"; do
  case "$arg" in
    --test) extras="${extras:+$extras,}test" ;;
    --gpu) extras="${extras:+$extras,}gpu" ;;
    *) echo "install.sh: unknown option '$arg' (expected --test or --gpu)" >&2; exit 2 ;;
  esac
done
PY="${PYTHON:-python3}"
if [[ ",$extras," != *",gpu,"* ]] && ! "$PY" -c "import torch" >/dev/null 2>&1; then
  "$PY" -m pip install -q "torch==2.13.0"
fi
"$PY" -m pip install -q -e ".${extras:+[$extras]}"
