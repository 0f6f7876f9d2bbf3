"""The learning diagnostics and the IG options, on hand-computed batches.

Encoding (igpo.advantage): each run of 1s in the mask is a model turn; IG sits on the last token of
every non-final turn, the outcome on the last token of the last turn.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from igpo.advantage import compute_igpo_advantage, group_spread
from igpo.metrics import gold_turn_credit, informative_group_metrics

MASK = torch.tensor([[1, 1, 0, 1]] * 2)  # two turns per row: tokens 0-1 (tool turn), token 3 (answer)


def batch(ig: list[float], outcome: list[float]) -> torch.Tensor:
    tlr = torch.zeros(len(ig), 4, dtype=torch.float64)
    for b, (g, o) in enumerate(zip(ig, outcome, strict=True)):
        tlr[b, 1], tlr[b, 3] = g, o
    return tlr


def test_group_spread_is_max_minus_min_per_group():
    v = torch.tensor([[1.0, 5.0], [2.0, 9.0], [7.0, 0.0]])
    member = torch.tensor([[True, False], [True, False], [True, True]])
    got = group_spread(v, member, torch.tensor([0, 0, 1]), 3)
    torch.testing.assert_close(got, torch.tensor([1.0, 7.0, 0.0]))  # group 2 has no member


def test_ig_tol_zeroes_near_tied_ig_and_ig_weight_scales_it():
    tlr = batch([0.01, 0.03], [1.0, 1.0])  # outcomes tie; IG spans 0.02 nats
    idx = np.array(["a", "a"], dtype=object)
    z = 0.01 / math.sqrt(0.01**2 + 0.01**2)  # (x - mean) / unbiased std = 1/sqrt(2)
    adv, _ = compute_igpo_advantage(tlr, MASK, idx)
    assert adv[0, 0].item() == pytest.approx(-z, rel=1e-4) and adv[1, 1].item() == pytest.approx(z, rel=1e-4)
    assert adv[:, 3].abs().max().item() == 0.0  # the tied outcome gives nothing
    same, _ = compute_igpo_advantage(tlr, MASK, idx, ig_tol=0.01)  # spread 0.02 >= 0.01: kept
    torch.testing.assert_close(same, adv)
    off, _ = compute_igpo_advantage(tlr, MASK, idx, ig_tol=0.05)
    assert off.abs().max().item() == 0.0
    half, _ = compute_igpo_advantage(tlr, MASK, idx, ig_weight=0.5)
    torch.testing.assert_close(half, adv * 0.5)
    # the outcome part is untouched by both options
    tlr2 = batch([0.01, 0.03], [1.0, 0.0])
    o, _ = compute_igpo_advantage(tlr2, MASK, idx, ig_tol=0.05, ig_weight=0.0)
    g, _ = compute_igpo_advantage(tlr2, MASK, idx, reward_mode="f1")
    torch.testing.assert_close(o, g)
    with pytest.raises(ValueError, match="ig_tol"):
        compute_igpo_advantage(tlr, MASK, idx, ig_tol=-1.0)


def test_informative_group_metrics_counts_ties_and_flat_ig():
    # group a: tie, IG spread 0.02 (< 0.05: noise); b: outcomes differ; c: tie, IG spread 0.5
    tlr = torch.cat(
        [batch([0.01, 0.03], [1.0, 1.0]), batch([0.0, 0.0], [1.0, 0.0]), batch([0.0, 0.5], [0.0, 0.0])]
    )
    mask = torch.cat([MASK] * 3)
    idx = np.array(["a", "a", "b", "b", "c", "c"], dtype=object)
    m = informative_group_metrics(tlr, mask, idx)
    assert m["igpo/outcome_tie_group_share"] == pytest.approx(2 / 3)
    assert m["igpo/uninformative_group_share"] == pytest.approx(1 / 3)
    assert informative_group_metrics(tlr, mask, idx, ig_tol=1.0)[
        "igpo/uninformative_group_share"
    ] == pytest.approx(2 / 3)


def test_gold_turn_credit():
    mask = torch.tensor([[1, 1, 0, 1, 0, 1]] * 4)  # three turns: tokens 0-1, 3, 5
    adv = torch.tensor(
        [
            [0.5, 0.5, 0.0, -1.0, 0.0, -1.0],  # wrong, gold at turn 0, credited
            [-0.2, -0.2, 0.0, -0.3, 0.0, -1.0],  # wrong, gold at turn 1, not credited
            [0.9, 0.9, 0.0, 0.9, 0.0, 0.9],  # right: not counted
            [0.9, 0.9, 0.0, 0.9, 0.0, 0.9],  # wrong but never read the gold passage: not counted
        ]
    )
    m = gold_turn_credit(adv, mask, [0, 1, 0, None], [True, True, False, True])
    assert m == {"igpo/credit_gold_turn_positive_share": 0.5, "igpo/credit_gold_turn_count": 2.0}
    empty = gold_turn_credit(adv, mask, [None] * 4, [True] * 4)
    assert (
        math.isnan(empty["igpo/credit_gold_turn_positive_share"])
        and empty["igpo/credit_gold_turn_count"] == 0
    )


def test_analyze_ig_scale_decomposes_igpo_into_ig_and_outcome_parts():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "analyze_ig_scale.py"
    spec = importlib.util.spec_from_file_location("analyze_ig_scale", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    # row 0: useless search (IG 0) but right answer; row 1: useful search (IG 1) and wrong answer
    d = mod.decompose(batch([0.0, 1.0], [1.0, 0.0]), MASK, np.array(["a", "a"], dtype=object), [1.0, 0.0])
    z = 1 / math.sqrt(2)  # both parts are ±(0.5 / sqrt(0.5))
    assert d["by_searches"] == {1: pytest.approx([-z, z], rel=1e-4)}
    assert d["pushed"] == [True]  # the right rollout's first turn gets -z from IG: below GRPO's
    assert np.mean(d["ig_abs"]) == pytest.approx(4 * z / 6, rel=1e-4)  # IG part on the 4 search tokens, 0 on answers
    assert np.mean(d["out_abs"]) == pytest.approx(z, rel=1e-4)
    assert (d["noise_groups"], d["groups"]) == (0, 1)
    near_tie = mod.decompose(
        batch([0.0, 0.01], [1.0, 1.0]), MASK, np.array(["a", "a"], dtype=object), [1.0, 1.0]
    )
    assert near_tie["noise_groups"] == 1 and near_tie["ig_abs"] == []  # tied outcomes: not a mixed group
