"""Per-step IGPO metrics from a batch and the IG → reward step, as pure functions.

Everything here takes padded tensors and per-row Python objects (what the trainer reads back from
TransferQueue after ``to_padded_tensor``), so it runs on CPU against a real ``DataProto``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from igpo.info_gain import ground_truth_gain
from igpo.metrics import advantage_collapse_metrics, informative_group_metrics, turn_reward_metrics
from igpo.verl.ig_recompute import ig_to_token_rewards, information_gains

__all__ = ["ig_time_share", "igpo_step_metrics", "rewards_with_ig"]


def rewards_with_ig(
    rm_scores: torch.Tensor,
    response_mask: torch.Tensor,
    answer_lp: Sequence[torch.Tensor] | None,
    active: Sequence[bool],
    basis: str = "logprob",
) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """``token_level_rewards`` = outcome (``rm_scores``, untouched) + IG on the non-final turn ends.

    Args:
        rm_scores: ``(bs, L)`` outcome on the last response token (``AgentLoopOutput.as_dict``).
        response_mask: ``(bs, L)``.
        answer_lp: per row ``(T_i,)`` answer log-probs from the recompute, or None (``ig_source: none``).
        active: per row, False for rows that take no IG (verl's padding rows).
        basis: ``algorithm.igpo.ig_basis``.
    Returns:
        ``(token_level_rewards (bs, L), ig per row ((T_i − 1,) or None))``.
    """
    if answer_lp is None:
        return rm_scores.clone(), [None] * rm_scores.shape[0]
    gains = information_gains(answer_lp, basis)
    ig: list[torch.Tensor | None] = [g if a else None for g, a in zip(gains, active, strict=True)]
    return ig_to_token_rewards(rm_scores, response_mask, ig), ig


def _get(d: Any, key: str, default: Any = None) -> Any:
    if isinstance(d, Mapping):
        return d.get(key, default)
    return getattr(d, key, default) if d is not None else default


def _mean(xs: list[float]) -> float:
    return float(np.mean(xs)) if xs else math.nan


def igpo_step_metrics(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Sequence[Any] | np.ndarray,
    advantages: torch.Tensor,
    extra_fields: Sequence[Any],
    answer_lp: Sequence[torch.Tensor] | None = None,
    active: Sequence[bool] | None = None,
    seq_lens: Sequence[int] | None = None,
    copy_tokens: int | None = None,
    timings: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """The step's ``igpo/…`` and ``time/igpo_…`` metrics over the real (non-padding) rows.

    Args:
        token_level_rewards: ``(bs, L)`` outcome + IG as given to the estimator.
        response_mask: ``(bs, L)``.
        index: ``(bs,)`` group uid per row.
        advantages: ``(bs, L)`` the IGPO advantages of this batch.
        extra_fields: per row the agent loop's ``extra_fields`` (``reward_extra_info {f1, format_ok}``,
            ``turns``, ``tool_calls``, ``tool_errors``).
        answer_lp: per row ``(T_i,)`` answer log-probs (None with ``ig_source: none``).
        active: per row, False on padding rows (default all True).
        seq_lens: per row ``prompt + response`` length; with ``copy_tokens`` (answer-copy tokens
            appended to the real rows) gives ``igpo/copy_token_share`` (the recompute's extra work).
        timings: seconds, e.g. ``{"driver": …, "engine": …}``.
    Returns:
        ``igpo/outcome_f1_mean``, ``igpo/format_failure_rate``, ``igpo/ig_mean``, ``igpo/ig_std``,
        ``igpo/ig_count``, ``igpo/outcome_mean``, ``igpo/zero_adv_group_share_grpo`` / ``_igpo``
        (outcome-only baseline vs IGPO on the same batch), ``igpo/outcome_tie_group_share`` and
        ``igpo/uninformative_group_share`` (:func:`igpo.metrics.informative_group_metrics`), ``igpo/gt_logprob_gain`` (turn 0 → T−1,
        Fig. 5), ``igpo/turns_mean``, ``igpo/tool_calls_mean``, ``igpo/tool_error_rate``,
        ``igpo/copy_token_share`` and ``time/igpo_ig_s`` (+ its driver/engine parts).
    """
    bs = token_level_rewards.shape[0]
    act = list(active) if active is not None else [True] * bs
    keep = torch.tensor(act, dtype=torch.bool)
    idx = np.asarray(list(index), dtype=object)[keep.numpy()] if bs else np.asarray([], dtype=object)
    tlr, rmask, adv = token_level_rewards[keep], response_mask[keep], advantages[keep]
    rows = [e for e, a in zip(extra_fields, act, strict=True) if a]

    out: dict[str, float] = {}
    out.update(turn_reward_metrics(tlr, rmask))
    if tlr.shape[0]:
        out.update(advantage_collapse_metrics(tlr, rmask, idx, igpo_advantages=adv))
        out.update(informative_group_metrics(tlr, rmask, idx))
    f1 = [float(_get(_get(e, "reward_extra_info", {}), "f1", math.nan)) for e in rows]
    fmt = [float(_get(_get(e, "reward_extra_info", {}), "format_ok", math.nan)) for e in rows]
    out["igpo/outcome_f1_mean"] = _mean([x for x in f1 if not math.isnan(x)])
    out["igpo/format_failure_rate"] = _mean([1.0 - x for x in fmt if not math.isnan(x)])
    calls = [int(_get(e, "tool_calls", 0) or 0) for e in rows]
    errors = [int(_get(e, "tool_errors", 0) or 0) for e in rows]
    out["igpo/tool_calls_mean"] = _mean([float(c) for c in calls])
    out["igpo/tool_error_rate"] = float(sum(errors) / sum(calls)) if sum(calls) else 0.0
    turns = [_get(e, "turns") for e in rows]
    if turns and all(t is not None for t in turns):
        out["igpo/turns_mean"] = _mean([float(t) for t in turns])
    if answer_lp is not None:
        lps = [lp.reshape(-1).double() for lp, a in zip(answer_lp, act, strict=True) if a]
        out["igpo/gt_logprob_gain"] = ground_truth_gain(lps)
        out["igpo/gt_logprob_turn0_mean"] = _mean([float(lp[0]) for lp in lps if lp.numel()])
    if seq_lens is not None and copy_tokens is not None:
        total = sum(int(n) for n, a in zip(seq_lens, act, strict=True) if a)
        out["igpo/copy_token_share"] = copy_tokens / total if total else 0.0
    if timings:
        for k, v in timings.items():
            out[f"time/igpo_ig_{k}_s"] = float(v)
        out["time/igpo_ig_s"] = float(sum(timings.values()))
    return out


def ig_time_share(metrics: Mapping[str, float], step_s: float) -> dict[str, float]:
    """``igpo/ig_time_share``: the step's IG work (``time/igpo_ig_s``) over the wall time of the step's
    pipeline (rollout to update, ``step_s``); empty when the step computed no IG."""
    ig = metrics.get("time/igpo_ig_s")
    if ig is None or not step_s > 0:
        return {}
    return {"igpo/ig_time_share": float(ig) / float(step_s)}
