"""Evaluation: rollout records (rollout_io), per-dataset scores (calculate_metrics), LLM judge (judge)."""
