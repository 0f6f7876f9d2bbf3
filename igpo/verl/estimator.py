"""Registers the ``igpo`` advantage estimator with verl (``algorithm.adv_estimator=igpo``).

verl calls a registered estimator with ``token_level_rewards``, ``response_mask``, ``config``
(= ``config.algorithm``) and, when the batch has uids, ``index``; the turn structure travels in those
tensors (see :mod:`igpo.advantage` for the encoding contract). Settings live under
``algorithm.igpo`` (``reward_mode``, ``norm``); γ is ``algorithm.gamma``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from verl.trainer.ppo.core_algos import register_adv_est

from igpo.advantage import compute_igpo_advantage
from igpo.settings import IGPO_DEFAULTS, SettingError, check_settings


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    """Read ``key`` from a dict, DictConfig, verl dataclass config or plain object."""
    if cfg is None:
        return default
    if isinstance(cfg, Mapping) or hasattr(cfg, "get"):
        try:
            value = cfg.get(key, default)
        except Exception:  # a dataclass config whose .get raised on a missing field
            value = default
        return default if value is None else value
    return getattr(cfg, key, default)


def igpo_settings(config: Any) -> dict[str, Any]:
    """Resolve the estimator's settings from ``config.algorithm`` (any mapping-like or None)."""
    if _get(config, "use_kl_in_reward", False):
        raise SettingError(
            "algorithm.use_kl_in_reward=True is not supported with adv_estimator=igpo: the in-reward KL "
            "is spread over every token and would break the turn-reward encoding. Use the KL loss "
            "(actor_rollout_ref.actor.use_kl_loss=True, kl_loss_coef=0.001 as in the paper) instead."
        )
    sub = _get(config, "igpo", None)
    unknown = set(dict(sub).keys()) - set(IGPO_DEFAULTS) if sub is not None else set()
    if unknown:
        raise SettingError(
            f"algorithm.igpo has unknown keys {sorted(unknown)}; known: {sorted(IGPO_DEFAULTS)}"
        )
    settings = {k: _get(sub, k, v) for k, v in IGPO_DEFAULTS.items()}
    settings["gamma"] = _get(config, "gamma", 1.0)
    names = {k: f"algorithm.igpo.{k}" for k in IGPO_DEFAULTS} | {"gamma": "algorithm.gamma"}
    check_settings(settings, names)  # one line per bad key, naming it, its value and what is allowed
    settings["gamma"] = float(settings["gamma"])
    settings["norm_by_std"] = bool(_get(config, "norm_adv_by_std_in_grpo", True))
    return settings


@register_adv_est("igpo")
def compute_igpo_advantage_verl(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray | None = None,
    config: Any = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """verl entry point of the IGPO estimator; returns ``(advantages, returns)``, both ``(bs, L)``."""
    if index is None:
        raise ValueError("adv_estimator=igpo needs the group index (non_tensor_batch['uid']) of every row")
    s = igpo_settings(config)
    return compute_igpo_advantage(
        token_level_rewards,
        response_mask,
        index,
        gamma=s["gamma"],
        reward_mode=s["reward_mode"],
        norm=s["norm"],
        epsilon=s["epsilon"],
        norm_by_std=s["norm_by_std"],
        ig_tol=float(s["ig_tol"]),
        ig_weight=float(s["ig_weight"]),
    )
