#!/usr/bin/env bash
# IGPO training entry point; `bash policy_optimization.sh --help` prints the usage below.
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1  # progress reaches logs and pipes as it happens

usage() {
  cat <<'EOF'
usage: bash policy_optimization.sh [--help | --dry-run] [overrides ...]

Trains IGPO, then evaluates the result (evaluate.sh).

Engines (IGPO_ENGINE=local | verl; default: verl when `nvidia-smi -L` lists a GPU, else local):
  local  the embedded default: a synthetic multi-hop search task and a tiny policy on the CPU.
         Overrides are key=value fields of configs/local.yaml; the run lives in
         outputs/igpo-local/EXPERIMENT/ and resumes from its latest checkpoint when started again.
  verl   the paper's Table 4 setting on a GPU node (configs/igpo_trainer.yaml, hydra overrides).
         Without a GPU: verl's real trainer on the CPU test bed (igpo/verl/cpu, configs/platform/cpu.yaml):
         the embedded default's task, handler and warmed policy, 2 steps; checkpoints under
         checkpoints/igpo-verl-cpu/EXPERIMENT. Nothing of it is used on a GPU node.

Options:
  --help     this text
  --dry-run  verl path: check the settings and print the composed config; trains nothing

Environment (verl path): IGPO_MODEL_PATH, IGPO_TRAIN_FILES, IGPO_VAL_FILES, IGPO_EXPERIMENT,
  HANDLER_URL (a running search handler; when unset one is started from IGPO_CORPUS or IGPO_INDEX).
  PYTHON picks the interpreter (default python3).

Examples:
  bash policy_optimization.sh                                   # the embedded default (IGPO, 30 steps)
  bash policy_optimization.sh reward_mode=f1 experiment=grpo    # outcome-only baseline in its own run
  bash policy_optimization.sh steps=60                          # continue the default run to step 60
  bash policy_optimization.sh reward_mode=f1 resume=false       # replace the run (old one moved aside)
  IGPO_ENGINE=verl bash policy_optimization.sh algorithm.igpo.reward_mode=f1 trainer.experiment_name=grpo
  IGPO_ENGINE=verl bash policy_optimization.sh trainer.total_training_steps=3   # CPU test bed: resume to step 3
  bash policy_optimization.sh --dry-run algorithm.gamma=0.9

A setting outside its allowed values, or one that differs from the run being resumed, is refused
before any work starts, naming the key and both values.
EOF
}

case "${1:-}" in
  -h | --help) usage; exit 0 ;;
esac

ensure_installed() {
  if ! "$PY" -c "import igpo, verl, handler" >/dev/null 2>&1; then
    echo "[igpo] installing the project (bash scripts/install.sh) ..."
    bash scripts/install.sh
  fi
}

if [[ "${1:-}" == "--dry-run" ]]; then
  shift
  ensure_installed
  exec "$PY" -m igpo.verl.main --dry-run "$@"
fi

source scripts/engine.sh  # (the working directory is the repository root here)
engine="$(igpo_engine)" || exit 2

case "$engine" in
  local)
    echo "[igpo] running the embedded default (synthetic multi-hop task, tiny policy, CPU); for the cluster path run IGPO_ENGINE=verl bash policy_optimization.sh on a GPU node"
    ensure_installed
    "$PY" -m igpo.local.train "$@"
    bash evaluate.sh "$@"
    "$PY" - "$@" <<'PYEOF'
import json, sys
from igpo.local.engine import load_config
from igpo.local.train import DEFAULT_CONFIG
cfg = load_config(DEFAULT_CONFIG, [a for a in sys.argv[1:] if "=" in a])
res = json.loads((cfg.out_dir / "result.json").read_text())
scores = sorted(cfg.out_dir.glob("score_step_*.json"), key=lambda p: int(p.stem.split("_")[-1]))
print("\n[igpo] embedded default finished:")
print(f"  checkpoint      {res['checkpoint']}")
print(f"  rollout JSON    {res['rollout']}")
print(f"  score JSON      {scores[-1] if scores else '(missing)'}")
print(f"  learning curve  {res['learning_curve']}")
print(f"  metrics         {res['metrics']}")
PYEOF
    ;;
  verl)
    ensure_installed
    if ! igpo_has_gpu; then  # verl's real trainer on the CPU test bed (igpo/verl/cpu): a few steps, tiny policy
      echo "[igpo] no GPU: running verl's trainer on the CPU test bed (embedded default task, handler and policy); overrides: $*"
      exec "$PY" -m igpo.verl.cpu.run "$@"
    fi
    echo "[igpo] running the verl cluster path (paper's Table 4 setting); overrides: $*"
    "$PY" -m igpo.verl.main --check "$@" || exit 2  # bad settings, no GPU or data: before the handler
    handler_pid=""
    if [[ -z "${HANDLER_URL:-}" ]]; then
      port="${HANDLER_PORT:-8000}"  # the handler's own default (configs/handler.yaml)
      if [[ -n "${IGPO_INDEX:-}" ]]; then src=(--index-dir "$IGPO_INDEX" --corpus "${IGPO_CORPUS:?IGPO_CORPUS must name the corpus of IGPO_INDEX}"); elif [[ -n "${IGPO_CORPUS:-}" ]]; then src=(--corpus "$IGPO_CORPUS");
      else echo "[igpo] set HANDLER_URL, or IGPO_CORPUS / IGPO_INDEX so a local handler can be started" >&2; exit 2; fi
      mkdir -p outputs
      "$PY" -m handler serve "${src[@]}" --port "$port" >outputs/handler.log 2>&1 &
      handler_pid=$!
      trap '[[ -n "$handler_pid" ]] && kill "$handler_pid" 2>/dev/null || true' EXIT
      export HANDLER_URL="http://127.0.0.1:$port"
      echo "[igpo] started a local handler (pid $handler_pid, log outputs/handler.log); waiting for $HANDLER_URL/health"
      "$PY" - "$HANDLER_URL" <<'PYEOF'
import sys, time, httpx
url, deadline = sys.argv[1] + "/health", time.time() + 600
while time.time() < deadline:
    try:
        if httpx.get(url, timeout=2).status_code == 200:
            sys.exit(0)
    except httpx.HTTPError:
        pass
    time.sleep(1)
sys.exit(f"handler did not answer {url} within 600 s: see outputs/handler.log")
PYEOF
    fi
    export IGPO_HANDLER_URLS="${IGPO_HANDLER_URLS:-$HANDLER_URL}"  # read by configs/tools/search_tool.yaml
    "$PY" -m igpo.verl.main "$@"
    ;;
esac
