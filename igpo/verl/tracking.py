"""Which trackers verl's trainer logs to (``trainer.logger``): checked up front, wandb added when set up.

IGPO's default is ``[console, tensorboard]`` (``configs/igpo_trainer.yaml``). ``wandb`` is added only
when ``WANDB_API_KEY`` is in the environment and the ``wandb`` package is importable, so it is never
required; a ``trainer.logger=...`` given on the command line is left as it is. The key itself is never
read beyond its presence, nor logged.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping, Sequence

from igpo.settings import SettingError

__all__ = ["check_loggers", "supported_loggers", "wandb_logger_override"]


def supported_loggers() -> tuple[str, ...]:
    """The tracker names verl 0.9.1's ``Tracking`` accepts."""
    from verl.utils.tracking import Tracking

    return tuple(Tracking.supported_backend)


def _wandb_installed() -> bool:
    return importlib.util.find_spec("wandb") is not None


def check_loggers(
    loggers: Sequence[str] | str, wandb_installed: Callable[[], bool] = _wandb_installed
) -> None:
    """Refuse an unknown tracker, or ``wandb`` without its package, naming ``trainer.logger``."""
    names = [loggers] if isinstance(loggers, str) else list(loggers)
    allowed = supported_loggers()
    bad = [n for n in names if n not in allowed]
    if bad:
        raise SettingError(
            f"trainer.logger: {bad[0]!r} is not a verl tracker (got {names}); allowed: {', '.join(allowed)}"
        )
    if "wandb" in names and not wandb_installed():
        raise SettingError(
            f"trainer.logger: 'wandb' is listed (got {names}) but the wandb package is not installed; "
            "pip install wandb, or leave wandb out"
        )


def wandb_logger_override(
    loggers: Sequence[str],
    overrides: Sequence[str],
    environ: Mapping[str, str],
    wandb_installed: Callable[[], bool] = _wandb_installed,
) -> tuple[str | None, str | None]:
    """The hydra override that adds ``wandb`` to ``loggers`` (the composed ``trainer.logger``), or None.

    Added when ``WANDB_API_KEY`` is set (non-empty), ``wandb`` is importable, it is not listed yet and
    no override sets ``trainer.logger`` itself. Returns ``(override, note)``; ``note`` is a line for the
    user when the key is set but wandb cannot be used (otherwise None).
    """
    names = list(loggers)
    if not environ.get("WANDB_API_KEY") or "wandb" in names:
        return None, None
    if any(o.lstrip("+~").split("=", 1)[0] == "trainer.logger" for o in overrides):
        return None, None
    if not wandb_installed():
        return None, "WANDB_API_KEY is set but the wandb package is not installed; logging without wandb"
    return f"trainer.logger=[{','.join([*names, 'wandb'])}]", None
