"""verl config classes extended with IGPO's settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from verl.trainer.config import AlgoConfig

from igpo.prompts import ANSWER_WRAPPER

IGPO_DEFAULTS: dict[str, Any] = {
    "reward_mode": "f1+ig",
    "norm": "separate",
    "epsilon": 1e-6,
    "ig_source": "recompute",
    "ig_basis": "logprob",
    "format_penalty": -1.0,
    # the layout the system prompt asks for; igpo.prompts.INLINE_ANSWER_WRAPPER is the paper's inline example
    "answer_template": ANSWER_WRAPPER,
}

# Allowed values of the enumerated settings, checked where the settings are read.
IGPO_CHOICES: dict[str, tuple[str, ...]] = {
    "reward_mode": ("f1+ig", "f1", "ig"),
    "norm": ("separate", "joint"),
    "ig_source": ("recompute", "none"),
    "ig_basis": ("logprob", "prob"),
}


@dataclass
class IGPOAlgoConfig(AlgoConfig):
    """verl's ``AlgoConfig`` plus the ``igpo`` block (``algorithm.igpo.*`` in hydra)."""

    igpo: dict[str, Any] = field(default_factory=lambda: dict(IGPO_DEFAULTS))
