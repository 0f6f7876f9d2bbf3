#!/usr/bin/env bash
# Validation-only rollouts of a checkpoint, then per-dataset F1/EM scores; `--help` prints the usage.
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-python3}"

usage() {
  cat <<'EOF'
usage: bash evaluate.sh [--help] [--checkpoint DIR] [overrides ...]

Rolls out a trained checkpoint on held-out questions and scores the rollouts per data source
(F1, EM, cover-EM) with evaluate/calculate_metrics.py.

Engines (IGPO_ENGINE=local | verl; default: verl when `nvidia-smi -L` lists a GPU, else local):
  local  greedy rollouts of the embedded default's test questions with the run's latest checkpoint
         (or --checkpoint DIR); overrides are key=value fields of configs/local.yaml and must match
         the run's training settings (experiment=NAME picks the run).
  verl   the trainer's validation pass (trainer.val_only=true) on the GPUs, hydra overrides; without a
         GPU on the CPU test bed (python -m igpo.verl.cpu.run, the embedded default's task).

Writes outputs/PROJECT/EXPERIMENT/rollout/rollout_step_K.json and outputs/PROJECT/EXPERIMENT/score_step_K.json
(the local handler's log: outputs/igpo-local/EXPERIMENT/handler-eval.log).

Environment (verl path): IGPO_VAL_FILES (default data/test.parquet), IGPO_VAL_DIR (verl's dump folder,
  default outputs/validation), IGPO_VAL_DUMP (score this dump of verl's instead of running validation),
  IGPO_PROJECT (default igpo), IGPO_EXPERIMENT (default eval).

Examples:
  bash evaluate.sh                                  # the embedded default's latest checkpoint
  bash evaluate.sh experiment=grpo                  # another local run
  bash evaluate.sh --checkpoint outputs/igpo-local/embedded-default/checkpoints/step_10
  python evaluate/calculate_metrics.py grpo         # re-score a run's latest rollout file
EOF
}

case "${1:-}" in
  -h | --help) usage; exit 0 ;;
esac

# Score a rollout file (into score_step_k.json beside its rollout/ folder) and print both paths.
score_rollout() {
  local rollout="$1" score
  score="$("$PY" -c 'import sys; from igpo.rollout_io import score_path; print(score_path(sys.argv[1]))' \
    "$rollout")"
  "$PY" evaluate/calculate_metrics.py "$rollout"  # names the score file the same way (score_path)
  echo "rollout: $rollout"
  echo "scores:  $score"
}

source scripts/engine.sh  # (the working directory is the repository root here)
engine="$(igpo_engine)" || exit 2

case "$engine" in
  local)
    rollout=$("$PY" -m igpo.local.evaluate "$@" | tail -n 1)
    [[ -f "$rollout" ]] || { echo "evaluate.sh: no rollout file was written" >&2; exit 1; }
    score_rollout "$rollout"
    ;;
  verl)
    out="${IGPO_VAL_DIR:-outputs/validation}"
    if igpo_has_gpu; then
      val_files="${IGPO_VAL_FILES:-data/test.parquet}"
      runner=(-m igpo.verl.main)
    else  # the CPU test bed: its own task's held-out questions
      val_files="${IGPO_VAL_FILES:-outputs/igpo-verl-cpu/assets/policy/data/test.parquet}"
      runner=(-m igpo.verl.cpu.run)
    fi
    if [[ -n "${IGPO_VAL_DUMP:-}" ]]; then  # score a dump verl already wrote (e.g. a training run's validation)
      [[ -f "$IGPO_VAL_DUMP" ]] || { echo "evaluate.sh: IGPO_VAL_DUMP=$IGPO_VAL_DUMP is not a file" >&2; exit 2; }
      dump="$IGPO_VAL_DUMP"
    else
      "$PY" "${runner[@]}" trainer.val_only=true trainer.val_before_train=true trainer.validation_data_dir="$out" "$@"
      dump=$(ls -t "$out"/*.jsonl 2>/dev/null | head -n 1)
    fi
    [[ -n "$dump" ]] || { echo "evaluate.sh: verl wrote no validation dump in $out" >&2; exit 1; }
    rollout=$("$PY" -m igpo.verl.val_dump "$dump" --val-files $val_files \
      --out-dir "outputs/${IGPO_PROJECT:-igpo}/${IGPO_EXPERIMENT:-eval}/rollout" | tail -n 1)
    score_rollout "$rollout"
    ;;
esac
