"""Training diagnostics the paper plots: zero-advantage group share (Fig. 1), IG statistics,
ground-truth log-prob gain (Fig. 5) and turn counts. Pure functions over tensors."""

from __future__ import annotations

import numpy as np
import torch

from igpo.advantage import _group_ids, compute_igpo_advantage, decode_turn_rewards


def zero_advantage_group_share(
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray | list | torch.Tensor,
    atol: float = 1e-6,
) -> float:
    """Share of groups in which every model token of every rollout has ``|advantage| <= atol``.

    Args:
        advantages: ``(bs, L)``.
        response_mask: ``(bs, L)``.
        index: ``(bs,)`` prompt uid per row.
    Returns:
        A float in [0, 1] (0.0 for an empty batch). Such groups give no policy gradient.
    """
    bs = advantages.shape[0]
    if bs == 0:
        return 0.0
    group, n_groups = _group_ids(index, bs)
    nonzero_row = ((advantages.abs() > atol) & response_mask.bool()).any(dim=-1)
    live = torch.zeros(n_groups, dtype=torch.bool).index_put_((group,), nonzero_row.cpu(), accumulate=True)
    return float((~live).float().mean().item())


def advantage_collapse_metrics(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray | list | torch.Tensor,
    igpo_advantages: torch.Tensor | None = None,
    **igpo_kwargs,
) -> dict[str, float]:
    """Zero-advantage group share of the outcome-only baseline (GRPO) and of IGPO on the same batch."""
    grpo_adv, _ = compute_igpo_advantage(
        token_level_rewards, response_mask, index, gamma=1.0, reward_mode="f1"
    )
    if igpo_advantages is None:
        igpo_advantages, _ = compute_igpo_advantage(token_level_rewards, response_mask, index, **igpo_kwargs)
    return {
        "igpo/zero_adv_group_share_grpo": zero_advantage_group_share(grpo_adv, response_mask, index),
        "igpo/zero_adv_group_share_igpo": zero_advantage_group_share(igpo_advantages, response_mask, index),
    }


def turn_reward_metrics(token_level_rewards: torch.Tensor, response_mask: torch.Tensor) -> dict[str, float]:
    """IG mean/std over all non-final turns, outcome mean, and turns per rollout."""
    turns = decode_turn_rewards(token_level_rewards, response_mask)
    ig = turns.rewards[turns.is_ig]
    n = turns.n_turns.double()
    return {
        "igpo/ig_mean": float(ig.mean()) if ig.numel() else 0.0,
        "igpo/ig_std": float(ig.std()) if ig.numel() > 1 else 0.0,
        "igpo/ig_count": float(ig.numel()),
        "igpo/outcome_mean": float(turns.outcome.mean()) if n.numel() else 0.0,
        "igpo/turns_mean": float(n.mean()) if n.numel() else 0.0,
        "igpo/turns_max": float(n.max()) if n.numel() else 0.0,
    }
