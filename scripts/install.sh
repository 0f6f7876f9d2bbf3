#!/usr/bin/env bash
# Install IGPO for this machine. CPU torch goes in first, from PyTorch's CPU wheel index, so that verl's
# dependency on torch does not pull a multi-GB CUDA build. Usage: bash scripts/install.sh [--test] [--gpu]
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
TORCH="torch==2.13.0"
# PyTorch's own CPU wheel index: from the public index a plain `pip install torch` on Linux resolves to
# the manylinux CUDA build (several GB). IGPO_TORCH_CPU_INDEX points elsewhere (a mirror).
CPU_INDEX="${IGPO_TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"
if [[ ",$extras," != *",gpu,"* ]] && ! "$PY" -c "import torch" >/dev/null 2>&1; then
  if "$PY" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + '/torch/', timeout=10)" \
      "$CPU_INDEX" >/dev/null 2>&1; then
    echo "[install] CPU torch from $CPU_INDEX"
    "$PY" -m pip install -q --index-url "$CPU_INDEX" "$TORCH"
  else
    echo "[install] $CPU_INDEX did not answer: installing $TORCH from pip's configured index instead" \
      "(a local wheel or mirror if there is one; from the public index on Linux that is the CUDA build)" >&2
    "$PY" -m pip install -q "$TORCH"
  fi
fi
"$PY" -m pip install -q -e ".${extras:+[$extras]}"
