"""Evaluation: per-dataset scores (calculate_metrics) and the LLM judge (judge); rollout records are igpo.rollout_io."""
