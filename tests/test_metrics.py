"""Diagnostics: zero-advantage group share (paper Fig. 1) and turn-reward statistics."""

import numpy as np
import pytest
import torch

from igpo.metrics import advantage_collapse_metrics, turn_reward_metrics, zero_advantage_group_share


def test_zero_advantage_group_share_counts_groups_not_rows():
    mask = torch.ones(4, 3)
    adv = torch.tensor([[0.0, 0, 0], [0, 0, 0], [0, 0.5, 0], [0, 0, 0]])
    # groups: a = rows 0,1 (all zero), b = rows 2,3 (one live token) -> 1 of 2 groups collapsed
    assert zero_advantage_group_share(adv, mask, ["a", "a", "b", "b"]) == 0.5
    # a nonzero advantage on a masked-out token does not count
    adv2 = torch.tensor([[0.0, 0, 9.0], [0, 0, 0], [0, 0.5, 0], [0, 0, 0]])
    mask2 = mask.clone()
    mask2[0, 2] = 0
    assert zero_advantage_group_share(adv2, mask2, ["a", "a", "b", "b"]) == 0.5


def test_collapse_metrics_grpo_vs_igpo_on_same_batch():
    # group "same": both rollouts score 1.0 but gathered different information; group "mixed": 1.0 vs 0.0
    mask = torch.tensor([[1, 0, 1], [1, 0, 1], [1, 0, 1], [1, 0, 1]], dtype=torch.float32)
    rew = torch.tensor([[0.3, 0, 1.0], [-0.2, 0, 1.0], [0.1, 0, 1.0], [0.4, 0, 0.0]])
    m = advantage_collapse_metrics(rew, mask, np.array(["same", "same", "mixed", "mixed"], dtype=object))
    assert m["igpo/zero_adv_group_share_grpo"] == 0.5
    assert m["igpo/zero_adv_group_share_igpo"] == 0.0


def test_turn_reward_metrics_hand_computed():
    mask = torch.tensor([[1, 0, 1, 0, 1], [1, 1, 1, 0, 0]], dtype=torch.float32)
    rew = torch.tensor([[0.2, 0, 0.4, 0, 1.0], [0, 0, 0.5, 0, 0]])
    m = turn_reward_metrics(rew, mask)
    assert m["igpo/ig_mean"] == pytest.approx(0.3)
    assert m["igpo/ig_std"] == pytest.approx(np.std([0.2, 0.4], ddof=1))
    assert m["igpo/outcome_mean"] == pytest.approx(0.75)
    assert m["igpo/turns_mean"] == 2.0 and m["igpo/turns_max"] == 3.0
