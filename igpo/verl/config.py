"""verl config classes extended with IGPO's settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from verl.trainer.config import AlgoConfig

from igpo.settings import IGPO_CHOICES, IGPO_DEFAULTS  # noqa: F401  (re-exported: defined once there)


@dataclass
class IGPOAlgoConfig(AlgoConfig):
    """verl's ``AlgoConfig`` plus the ``igpo`` block (``algorithm.igpo.*`` in hydra)."""

    igpo: dict[str, Any] = field(default_factory=lambda: dict(IGPO_DEFAULTS))
