# Sourced by policy_optimization.sh and evaluate.sh: which engine runs the job.
# IGPO_ENGINE=verl | local; unset: verl when `nvidia-smi -L` lists a GPU, else local.
# igpo_has_gpu: true when `nvidia-smi -L` lists a GPU (without one, the verl engine runs verl's trainer
# on the CPU test bed, igpo/verl/cpu).
igpo_has_gpu() {
  command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q GPU
}

igpo_engine() {
  local engine="${IGPO_ENGINE:-}"
  if [[ -z "$engine" ]]; then
    if igpo_has_gpu; then
      engine=verl
    else
      engine=local
    fi
  fi
  case "$engine" in
    verl | local) echo "$engine" ;;
    *) echo "IGPO_ENGINE must be 'verl' or 'local', got '$engine'" >&2; return 2 ;;
  esac
}
