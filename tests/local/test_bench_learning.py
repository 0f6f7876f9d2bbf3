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


def test_sign_test_matches_the_binomial_tail():
    # 5 wins of 5: two-sided p = 2 * (1/2)^5; 4 of 5: 2 * (1 + 5) / 32; ties are dropped
    assert bench.sign_test_p([0.1] * 5) == pytest.approx(2 / 32)
    assert bench.sign_test_p([0.1, 0.2, 0.3, 0.4, -0.1]) == pytest.approx(12 / 32)
    assert bench.sign_test_p([0.1, 0.0, 0.0]) == pytest.approx(1.0)
    assert bench.sign_test_p([0.0, 0.0]) == 1.0


def test_paired_stats_interval_brackets_the_mean_and_is_degenerate_for_equal_differences():
    s = bench.paired_stats([0.1, 0.1, 0.1])
    assert s["mean"] == pytest.approx(0.1) and s["ci95"] == pytest.approx([0.1, 0.1])
    assert (s["wins"], s["losses"]) == (3, 0)
    d = [0.3, -0.1, 0.2, 0.0, 0.1]
    s = bench.paired_stats(d)
    assert s["mean"] == pytest.approx(0.1)
    assert min(d) <= s["ci95"][0] < 0.1 < s["ci95"][1] <= max(d)
    assert (s["wins"], s["losses"]) == (3, 1)


def test_window_means_and_paired_comparison():
    assert bench.window_means(list(range(1, 31))) == {"1-10": 5.5, "11-20": 15.5, "21-30": 25.5}
    assert bench.window_means([1.0] * 12) == {"1-10": 1.0}  # windows past the curve are left out

    def run(level: float, final: float) -> dict:
        return {"train_f1": [level] * 30, "test_f1": {"0": 0.1, "30": final}}

    runs = {
        "GRPO": {0: run(0.5, 0.6), 1: run(0.4, 0.5)},
        "IGPO": {0: run(0.6, 0.6), 1: run(0.3, 0.7), 2: run(0.9, 0.9)},  # seed 2 has no pair
    }
    c = bench.compare(runs)["IGPO - GRPO"]
    assert c["train_f1_steps_1-10"]["per_seed"] == pytest.approx([0.1, -0.1])
    assert c["test_f1_final"]["per_seed"] == pytest.approx([0.0, 0.2])
    assert bench.final_test({"test_f1": {"0": 0.1, "15": 0.4, "30": 0.5}}) == 0.5


def test_run_result_reads_the_metrics_log(tmp_path):
    import json

    rows = [
        {"step": 0, "eval/f1": 0.2, "eval/f1_hops3": 0.2, "eval/gt_logprob_gain": 1.5},
        {
            "step": 1,
            "igpo/outcome_f1_mean": 0.5,
            "igpo/zero_adv_group_share_igpo": 0.25,
            "igpo/outcome_tie_group_share": 0.5,
            "igpo/uninformative_group_share": 0.125,
            "igpo/credit_gold_turn_positive_share": None,  # NaN is logged as null
            "igpo/credit_gold_turn_count": 0.0,
            "tokens/update": 100.0,
        },
    ]
    p = tmp_path / "metrics.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows))
    r = bench.run_result(p, 3.0)
    assert r["train_f1"] == [0.5] and r["zero_adv_share"] == [0.25] and r["tokens"] == [100.0]
    assert np.isnan(r["credit_share"][0]) and r["test_f1"] == {"0": 0.2}
    assert r["test_f1_by_hops"] == {"0": {"3": 0.2}} and r["eval_gt"]["0"]["gain"] == 1.5
    assert np.isnan(r["eval_gt"]["0"]["turn0"])


def test_variant_summary_and_markdown_tables():
    def run(level: float, final: float) -> dict:
        return {
            "train_f1": [level] * 20,
            "test_f1": {"0": 0.1, "20": final},
            "eval_gt": {"0": {"gain": 1.0}, "20": {"gain": 2.0}},
            "outcome_tie_share": [0.5] * 20,
            "uninformative_share": [0.25] * 20,
            "zero_adv_share": [0.0] * 20,
            "credit_share": [float("nan")] * 10 + [0.5] * 10,
            "tokens": [100.0] * 20,
            "wall_s": 1.0,
        }

    runs = {"IGPO": {0: run(0.6, 0.7), 1: run(0.5, 0.5)}, "GRPO": {0: run(0.5, 0.6), 1: run(0.5, 0.6)}}
    s = bench.variant_summary(runs)
    a = s["arms"]["IGPO"]
    assert a["train_f1_windows"] == {"1-10": pytest.approx(0.55), "11-20": pytest.approx(0.55)}
    assert a["test_f1_final"] == pytest.approx(0.6) and a["credit_share"] == pytest.approx(0.5)
    assert a["update_tokens"] == 2000 and a["eval_gt_gain_final"] == 2.0
    assert s["paired"]["IGPO - GRPO"]["test_f1_final"]["per_seed"] == pytest.approx([0.1, -0.1])
    md = bench.markdown({"summary": {"v": s}, "variants": {"v": ["hops=[3]"]}})
    assert (
        "| IGPO | 2 | 0.550 | 0.550 | 0.10 → 0.60 | 0.50 | 0.25 | 0.00 | 0.50 | 1.00 → 2.00 | 2,000 |" in md
    )
    assert "- IGPO - GRPO: train F1 1-10: **+0.050**" in md and "final test F1: **+0.000**" in md
