"""IGPO advantages: group-normalized turn rewards (Eq. 5), turn-level discounted returns (Eq. 6).

Encoding contract (the rest of the project relies on it)
--------------------------------------------------------
The estimator sees only ``token_level_rewards`` and ``response_mask`` of shape ``(bs, L)`` and the
group ``index`` (prompt uid) of each row, so the turn structure is encoded in these tensors:

* every maximal run of 1s in ``response_mask`` is one model turn, in order; the last run is the
  answer turn (for a truncated rollout, whatever its last model turn was);
* ``token_level_rewards`` holds the outcome reward ``r^O`` (Eq. 2) on the last token of the last run
  and the information gain ``r^IG_t`` (Eq. 4) of turn t on the last token of run t for every earlier
  run; it is zero elsewhere;
* an information gain of exactly 0.0 is legal: turns are found from the mask, never from the rewards.

Reading is deliberately forgiving in one way: a reward anywhere in *segment* t (run t plus the
environment tokens after it, up to the next run) is credited to turn t, so an outcome that a loop
wrote on a trailing tool-response token still lands on the answer turn. A row with no model token
keeps its outcome (it takes part in its group's statistics) but gets no advantage.

Computation, vectorized over the batch (no per-token Python loop):

1. per-turn rewards ``r[b, t]`` gathered from the segments (``(bs, T_max)``);
2. per-group z-scores, as verl's GRPO computes them: mean and unbiased std, ``(x − mean)/(std + eps)``;
   a set with a single value uses mean 0 and std 1. ``norm="separate"`` z-scores the IG rewards of all
   non-final turns of all rollouts of a group together and the outcome rewards separately;
   ``"joint"`` z-scores both as one set;
3. ``reward_mode``: ``"f1+ig"`` (IGPO), ``"f1"`` (outcome only: equals verl's GRPO at γ = 1), ``"ig"``
   (IG only: the answer turn's normalized reward is 0); two options, off by default (the paper's method):
   ``ig_tol`` zeroes the normalized IG of a group whose raw IG values all lie within ``ig_tol`` nats of
   each other (z-scoring would blow such near-ties up to unit size), ``ig_weight`` scales the
   normalized IG part (``norm="separate"`` and ``"ig"``);
4. discounted turn returns ``R[b, t] = Σ_{k ≥ t} γ^{k−t} r̃[b, k]`` written on every token of run t;
   0 on mask-0 tokens and padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from igpo.turns import run_starts_ends, turn_structure

REWARD_MODES = ("f1+ig", "f1", "ig")
NORM_MODES = ("separate", "joint")


@dataclass(frozen=True)
class TurnRewards:
    """Per-turn view of an encoded batch.

    Attributes:
        rewards: ``(bs, T_max)`` raw reward per turn (IG for non-final turns, outcome for the last).
        n_turns: ``(bs,)`` number of model turns (runs) per row; may be 0.
        is_ig: ``(bs, T_max)`` bool, True on the non-final turns of each row (the IG rewards).
        is_outcome: ``(bs, T_max)`` bool, True on the outcome slot (turn ``max(n_turns, 1) - 1``).
        run_id: ``(bs, L)`` long turn index of each token, -1 on mask-0 tokens.
    """

    rewards: torch.Tensor
    n_turns: torch.Tensor
    is_ig: torch.Tensor
    is_outcome: torch.Tensor
    run_id: torch.Tensor

    @property
    def outcome(self) -> torch.Tensor:
        """``(bs,)`` outcome reward of each row."""
        return (self.rewards * self.is_outcome).sum(dim=-1)


def decode_turn_rewards(token_level_rewards: torch.Tensor, response_mask: torch.Tensor) -> TurnRewards:
    """Read per-turn rewards out of ``token_level_rewards`` per the encoding contract.

    Args:
        token_level_rewards: ``(bs, L)``.
        response_mask: ``(bs, L)``, 1 on model tokens.
    """
    if token_level_rewards.shape != response_mask.shape or token_level_rewards.dim() != 2:
        raise ValueError(
            "token_level_rewards and response_mask must both be (bs, response_len), got "
            f"{tuple(token_level_rewards.shape)} and {tuple(response_mask.shape)}"
        )
    bs = token_level_rewards.shape[0]
    run_id, seg, n_turns = turn_structure(response_mask)
    t_max = max(int(n_turns.max().item()) if bs else 1, 1)
    # Scatter in the input dtype (a segment usually holds one nonzero value), then widen the small result.
    rewards = torch.zeros(bs, t_max, dtype=token_level_rewards.dtype, device=token_level_rewards.device)
    rewards = rewards.scatter_add_(1, seg, token_level_rewards).to(torch.float64)
    slots = torch.arange(t_max, device=token_level_rewards.device).unsqueeze(0)
    last = (n_turns.clamp(min=1) - 1).unsqueeze(1)
    return TurnRewards(
        rewards=rewards, n_turns=n_turns, is_ig=slots < last, is_outcome=slots == last, run_id=run_id
    )


def _group_ids(index: np.ndarray | list | torch.Tensor, bs: int) -> tuple[torch.Tensor, int]:
    """Map arbitrary prompt uids to dense group ids ``(bs,)`` in ``[0, n_groups)``."""
    if isinstance(index, torch.Tensor):
        index = index.cpu().numpy()
    arr = np.asarray(index, dtype=object).reshape(-1)
    if arr.shape[0] != bs:
        raise ValueError(f"index has {arr.shape[0]} entries but the batch has {bs} rows")
    lookup: dict = {}
    ids = np.fromiter((lookup.setdefault(u, len(lookup)) for u in arr.tolist()), dtype=np.int64, count=bs)
    return torch.from_numpy(ids), len(lookup)


def group_zscore(
    values: torch.Tensor,
    member: torch.Tensor,
    group: torch.Tensor,
    n_groups: int,
    epsilon: float = 1e-6,
    norm_by_std: bool = True,
) -> torch.Tensor:
    """Z-score the members of a reward set within each group, as verl's GRPO does.

    Args:
        values: ``(bs, T)`` float.
        member: ``(bs, T)`` bool, which entries belong to the set.
        group: ``(bs,)`` long group id of each row.
        n_groups: number of groups.
    Returns:
        ``(bs, T)``: ``(x − mean_g) / (std_g + epsilon)`` on members (``x − mean_g`` without std
        scaling), 0 elsewhere. Unbiased std; a group whose set has one value uses mean 0, std 1.
    """
    g = group.unsqueeze(1).expand_as(values)
    w = member.to(values.dtype)
    count = torch.zeros(n_groups, dtype=values.dtype, device=values.device).scatter_add_(
        0, g.reshape(-1), w.reshape(-1)
    )
    total = torch.zeros_like(count).scatter_add_(0, g.reshape(-1), (values * w).reshape(-1))
    mean = total / count.clamp(min=1)
    dev = (values - mean[g]) * w
    sq = torch.zeros_like(count).scatter_add_(0, g.reshape(-1), (dev * dev).reshape(-1))
    std = torch.sqrt(sq / (count - 1).clamp(min=1))
    single = count <= 1
    mean = torch.where(single, torch.zeros_like(mean), mean)
    std = torch.where(single, torch.ones_like(std), std)
    out = values - mean[g]
    if norm_by_std:
        out = out / (std[g] + epsilon)
    return out * w


def group_spread(
    values: torch.Tensor, member: torch.Tensor, group: torch.Tensor, n_groups: int
) -> torch.Tensor:
    """``(n_groups,)`` max − min of each group's member values (0 for a group with no member)."""
    g = group.unsqueeze(1).expand_as(values).reshape(-1)
    m = member.reshape(-1)
    v = values.reshape(-1)
    hi = torch.full((n_groups,), -torch.inf, dtype=values.dtype, device=values.device)
    lo = torch.full((n_groups,), torch.inf, dtype=values.dtype, device=values.device)
    hi = hi.scatter_reduce(0, g[m], v[m], reduce="amax")
    lo = lo.scatter_reduce(0, g[m], v[m], reduce="amin")
    return torch.where(torch.isfinite(hi - lo), hi - lo, torch.zeros_like(hi))


def discounted_turn_returns(turn_values: torch.Tensor, gamma: float) -> torch.Tensor:
    """Eq. 6: ``R[b, t] = Σ_{k ≥ t} γ^{k−t} r̃[b, k]`` for ``(bs, T)`` normalized turn rewards.

    Entries past a row's last turn must be 0 (they then contribute nothing).
    """
    t_max = turn_values.shape[-1]
    k = torch.arange(t_max, device=turn_values.device, dtype=turn_values.dtype)
    power = k.unsqueeze(1) - k.unsqueeze(0)  # [k, t] = k - t
    discount = torch.where(
        power >= 0,
        torch.pow(torch.as_tensor(gamma, dtype=turn_values.dtype), power.clamp(min=0)),
        torch.zeros_like(power),
    )
    return turn_values @ discount


def compute_igpo_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray | list | torch.Tensor,
    gamma: float = 1.0,
    reward_mode: str = "f1+ig",
    norm: str = "separate",
    epsilon: float = 1e-6,
    norm_by_std: bool = True,
    ig_tol: float = 0.0,
    ig_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """IGPO advantages for a batch encoded per the module's contract.

    Args:
        token_level_rewards: ``(bs, L)`` outcome and IG rewards on turn-end tokens.
        response_mask: ``(bs, L)``.
        index: ``(bs,)`` prompt uid of each row (rollouts of one prompt form a group).
        gamma: turn discount γ ∈ (0, 1].
        reward_mode: ``"f1+ig"``, ``"f1"`` or ``"ig"``.
        norm: ``"separate"`` or ``"joint"`` (only matters for ``"f1+ig"``).
        epsilon: added to the std, as in verl's GRPO.
        norm_by_std: divide by the std (False = mean-centering only, as Dr.GRPO).
        ig_tol: nats; a group whose IG rewards span less than this gets no IG advantage (0 = off).
        ig_weight: factor on the normalized IG rewards (1 = the paper; ``"separate"`` and ``"ig"``).
    Returns:
        ``(advantages, returns)``, both ``(bs, L)`` in the dtype of ``token_level_rewards``; the same
        tensor, as verl's GRPO returns.
    """
    if reward_mode not in REWARD_MODES:
        raise ValueError(f"igpo.reward_mode must be one of {REWARD_MODES}, got {reward_mode!r}")
    if norm not in NORM_MODES:
        raise ValueError(f"igpo.norm must be one of {NORM_MODES}, got {norm!r}")
    if not 0.0 < float(gamma) <= 1.0:
        raise ValueError(f"gamma must be in (0, 1], got {gamma!r}")
    turns = decode_turn_rewards(token_level_rewards, response_mask)
    bs = token_level_rewards.shape[0]
    group, n_groups = _group_ids(index, bs)
    group = group.to(token_level_rewards.device)
    if not (float(ig_tol) >= 0.0 and float(ig_weight) >= 0.0):
        raise ValueError(f"ig_tol and ig_weight must be >= 0, got {ig_tol!r} and {ig_weight!r}")
    r = turns.rewards

    def ig_part() -> torch.Tensor:
        z = group_zscore(r, turns.is_ig, group, n_groups, epsilon, norm_by_std)
        if ig_tol > 0.0:
            flat = group_spread(r, turns.is_ig, group, n_groups) < ig_tol
            z = z.masked_fill(flat[group].unsqueeze(1), 0.0)
        return z * ig_weight if ig_weight != 1.0 else z

    if reward_mode == "f1":
        normed = group_zscore(r, turns.is_outcome, group, n_groups, epsilon, norm_by_std)
    elif reward_mode == "ig":
        normed = ig_part()
    elif norm == "separate":
        normed = ig_part() + group_zscore(r, turns.is_outcome, group, n_groups, epsilon, norm_by_std)
    else:
        normed = group_zscore(r, turns.is_ig | turns.is_outcome, group, n_groups, epsilon, norm_by_std)
    returns_per_turn = discounted_turn_returns(normed, float(gamma))
    run_id = turns.run_id
    adv = torch.gather(returns_per_turn, 1, run_id.clamp(min=0))
    adv = adv.masked_fill_(run_id < 0, 0.0).to(token_level_rewards.dtype)
    return adv, adv  # verl's GRPO also returns one tensor as both


def ig_to_token_rewards(
    token_level_scores: torch.Tensor,
    response_mask: torch.Tensor,
    ig: Sequence[torch.Tensor | None],
) -> torch.Tensor:
    """Write IG onto the last token of every non-final run of ``response_mask``.

    The encoder of this module's contract (the inverse of :func:`decode_turn_rewards`): ``IG`` of turn t (``ig[b][t]``, t = 0 … T_b − 2) goes on
    the last token of run t; the outcome already on the last run (verl writes ``reward_score`` on
    the last response token, ``AgentLoopOutput.as_dict``) stays where it is.

    Args:
        token_level_scores: ``(bs, L)`` outcome-only rewards (``rm_scores``); not modified.
        response_mask: ``(bs, L)``.
        ig: per row ``(T_b − 1,)`` or None (row without IG, e.g. verl's padding rows).
    Returns:
        A new ``(bs, L)`` tensor (dtype of ``token_level_scores``).
    Raises:
        ValueError if a row has ``len(ig[b]) + 1`` ≠ its number of runs (the agent loop's
        ``tool_turn_ends`` disagree with ``response_mask``).
    """
    if token_level_scores.shape != response_mask.shape:
        raise ValueError(
            f"token_level_scores {tuple(token_level_scores.shape)} and response_mask "
            f"{tuple(response_mask.shape)} differ"
        )
    if len(ig) != token_level_scores.shape[0]:
        raise ValueError(f"ig has {len(ig)} rows, the batch {token_level_scores.shape[0]}")
    out = token_level_scores.clone()
    _, ends = run_starts_ends(response_mask)
    for b, g in enumerate(ig):
        if g is None or g.numel() == 0:
            continue
        pos = ends[b].nonzero().reshape(-1)
        if pos.numel() != g.numel() + 1:
            raise ValueError(
                f"row {b}: {g.numel()} information gains need {g.numel() + 1} model turns (runs of "
                f"response_mask), found {pos.numel()}"
            )
        out[b, pos[:-1]] += g.to(out.device, out.dtype)
    return out
