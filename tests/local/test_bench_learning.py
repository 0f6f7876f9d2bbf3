"""The learning benchmark's summary arithmetic, on hand-made curves."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

spec = importlib.util.spec_from_file_location(
    "bench_learning", Path(__file__).resolve().parents[2] / "scripts" / "bench_learning.py"
)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_smooth_is_a_trailing_mean():
    np.testing.assert_allclose(bench.smooth([1, 2, 3, 4, 5, 6], k=3), [1, 1.5, 2, 3, 4, 5])


def test_steps_to_reach():
    assert bench.steps_to_reach(np.array([0.1, 0.3, 0.5, 0.4]), 0.45) == 3
    assert bench.steps_to_reach(np.array([0.1, 0.2]), 0.5) is None


def test_summary_goal():
    # GRPO climbs linearly to 0.5 in 10 steps; IGPO reaches 0.5 at step 5; zero-adv 0.4 vs 0.1
    grpo = {"train_f1": list(np.linspace(0.05, 0.5, 10)), "zero_adv_share": [0.4] * 10}
    igpo = {"train_f1": [0.1, 0.2, 0.3, 0.4, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5], "zero_adv_share": [0.1] * 10}
    s = bench.summarize({"f1": {0: grpo}, "f1+ig": {0: igpo}}, k=1)
    assert s["grpo_final_f1_smoothed"] == pytest.approx(0.5)
    assert s["igpo_steps_to_grpo_final"] == 5 and s["igpo_steps_share_of_grpo"] == 0.5
    assert s["zero_adv_ratio_igpo_over_grpo"] == pytest.approx(0.25)
    assert s["goal_met"] is True
    slow = {"train_f1": [0.1] * 9 + [0.5], "zero_adv_share": [0.1] * 10}
    assert bench.summarize({"f1": {0: grpo}, "f1+ig": {0: slow}}, k=1)["goal_met"] is False


def test_summary_refuses_a_verdict_when_grpo_does_not_learn():
    flat = {"train_f1": [0.2, 0.18, 0.15, 0.15], "zero_adv_share": [0.3] * 4}
    igpo = {"train_f1": [0.2, 0.2, 0.2, 0.2], "zero_adv_share": [0.0] * 4}
    s = bench.summarize({"f1": {0: flat}, "f1+ig": {0: igpo}}, k=1)
    assert s["goal_met"] is None and "did not rise" in s["goal_note"]
