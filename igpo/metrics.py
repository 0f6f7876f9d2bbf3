"""Training diagnostics the paper plots: zero-advantage group share (Fig. 1), IG statistics,
ground-truth log-prob gain (Fig. 5) and turn counts. Pure functions over tensors."""

from __future__ import annotations

import numpy as np
import torch

from igpo.advantage import _group_ids, compute_igpo_advantage, decode_turn_rewards, group_spread
from igpo.turns import turn_index

#: nats. A group whose raw IG rewards all lie within this of each other, and whose outcomes tie, gives IGPO
#: advantages that are z-scored noise (a 0.05-nat spread is a 5% change of the gold answer's probability).
IG_NOISE_TOL_NATS = 0.05


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


def informative_group_metrics(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray | list | torch.Tensor,
    ig_tol: float = IG_NOISE_TOL_NATS,
) -> dict[str, float]:
    """Advantage collapse measured on the raw rewards, the same for every reward mode.

    Args:
        token_level_rewards: ``(bs, L)`` outcome + IG, encoded per :mod:`igpo.advantage`.
        response_mask: ``(bs, L)``.
        index: ``(bs,)`` group uid per row.
        ig_tol: nats, the IG spread below which a group's IG is counted as noise.
    Returns:
        ``igpo/outcome_tie_group_share``: groups whose outcome rewards are all equal (no GRPO gradient);
        ``igpo/uninformative_group_share``: groups tied on outcome whose IG rewards also span less than
        ``ig_tol`` (or that have no IG reward): IGPO's advantages there carry nothing beyond noise.
    """
    bs = token_level_rewards.shape[0]
    if bs == 0:
        return {"igpo/outcome_tie_group_share": 0.0, "igpo/uninformative_group_share": 0.0}
    turns = decode_turn_rewards(token_level_rewards, response_mask)
    group, n_groups = _group_ids(index, bs)
    r = turns.rewards.double()
    tie = group_spread(r, turns.is_outcome, group, n_groups) <= 1e-9
    flat_ig = group_spread(r, turns.is_ig, group, n_groups) < ig_tol
    return {
        "igpo/outcome_tie_group_share": float(tie.double().mean()),
        "igpo/uninformative_group_share": float((tie & flat_ig).double().mean()),
    }


def gold_turn_credit(
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    gold_turn: list[int | None],
    wrong: list[bool],
    atol: float = 1e-6,
) -> dict[str, float]:
    """Credit assignment (paper Appendix I): do wrong rollouts still credit the search that found the evidence?

    Args:
        advantages: ``(bs, L)`` the run's own advantages.
        response_mask: ``(bs, L)``.
        gold_turn: per row the index of the model turn whose tool response held the gold-bearing passage
            (None if no response did).
        wrong: per row, True when the final answer is wrong (F1 < 1).
    Returns:
        ``igpo/credit_gold_turn_positive_share``: among wrong rows with a gold turn, the share whose gold turn
        has a positive mean advantage (NaN when there is none); ``igpo/credit_gold_turn_count``: how many
        rows that share is over.
    """
    run_id, _ = turn_index(response_mask)
    pos = []
    for b, (t, w) in enumerate(zip(gold_turn, wrong, strict=True)):
        if not w or t is None:
            continue
        sel = run_id[b] == t
        if not bool(sel.any()):
            continue
        pos.append(float(advantages[b][sel].double().mean()) > atol)
    return {
        "igpo/credit_gold_turn_positive_share": float(np.mean(pos)) if pos else float("nan"),
        "igpo/credit_gold_turn_count": float(len(pos)),
    }
