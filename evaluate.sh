#!/usr/bin/env bash
# Validation-only rollouts of a checkpoint, then per-dataset F1/EM scores.
#
#   bash evaluate.sh [--checkpoint DIR] [overrides...]
#
# Local engine (default without a GPU): greedy rollouts of the embedded default's held-out questions
# written to outputs/{project}/{experiment}/rollout/rollout_step_{k}.json, then scored into
# outputs/{project}/{experiment}/score_step_{k}.json with evaluate/calculate_metrics.py.
# verl engine (IGPO_ENGINE=verl): the trainer's validation pass (trainer.val_only=true) on the GPUs;
# verl's dump (trainer.validation_data_dir) is converted to the same rollout JSON (igpo.verl.val_dump,
# data sources recovered from IGPO_VAL_FILES) and scored the same way.
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-python3}"

# Score a rollout file into score_step_k.json beside its rollout/ folder and print both paths.
score_rollout() {
  local rollout="$1" score
  score="$(dirname "$(dirname "$rollout")")/$(basename "$rollout" .json | sed 's/rollout_/score_/').json"
  "$PY" evaluate/calculate_metrics.py "$rollout" --out "$score"
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
    val_files="${IGPO_VAL_FILES:-data/test.parquet}"
    "$PY" -m igpo.verl.main trainer.val_only=true trainer.val_before_train=true trainer.validation_data_dir="$out" "$@"
    dump=$(ls -t "$out"/*.jsonl 2>/dev/null | head -n 1)
    [[ -n "$dump" ]] || { echo "evaluate.sh: verl wrote no validation dump in $out" >&2; exit 1; }
    rollout=$("$PY" -m igpo.verl.val_dump "$dump" --val-files $val_files \
      --out-dir "outputs/${IGPO_PROJECT:-igpo}/${IGPO_EXPERIMENT:-eval}/rollout" | tail -n 1)
    score_rollout "$rollout"
    ;;
esac
