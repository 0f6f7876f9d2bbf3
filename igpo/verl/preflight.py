"""Checks of the verl path that run in the driver before Ray starts, so that a systematic failure
(a bad data row, a handler that is down, a config verl would run with the wrong semantics) stops the
job at once with a message that says what to change, instead of failing every rollout later.

Each check raises :class:`PreflightError` (a ``SystemExit`` subclass: the message is printed without
a traceback) naming the key, file or URL and the value.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
from omegaconf import DictConfig, OmegaConf

from igpo.answer import as_gold_list

#: Rows named in a bad-data message (the count of all bad rows is given too).
MAX_NAMED_ROWS = 5


class PreflightError(SystemExit):
    """A start-up check failed; the message says what to change."""

    def __init__(self, message: str):
        super().__init__(f"igpo.verl: {message}")


def check_trainer_mode(config: DictConfig) -> None:
    """The V1 trainer in verl's ``sync`` mode, with the dataset counting prompts as the loop builds them."""
    from igpo.verl.trainer import TRAINER_MODE

    if not config.trainer.get("use_v1", False):
        raise PreflightError("trainer.use_v1 must be true: IGPO plugs into verl's V1 trainer")
    mode = config.trainer.v1.get("trainer_mode")
    if mode != TRAINER_MODE:
        raise PreflightError(
            f"trainer.v1.trainer_mode must be {TRAINER_MODE!r} (IGPO runs verl's sync loop; other modes switch "
            f"to the async replay buffer, which refills failed groups without end), got {mode!r}"
        )
    if config.data.get("tool_config_path") is not None:
        raise PreflightError(
            f"data.tool_config_path must be null, got {config.data.tool_config_path!r}: the igpo_search loop "
            "builds prompts without tool schemas (the system prompt describes the tools), so the dataset's "
            "length filter must not add them either"
        )


def _gold_error(value: Any) -> str | None:
    """Why a ``reward_model`` cell has no usable gold answer (None when it has one)."""
    gt = value.get("ground_truth") if isinstance(value, dict) else None
    if gt is None:
        return f"reward_model={value!r} has no ground_truth"
    try:
        golds = as_gold_list(gt)
    except (TypeError, ValueError) as e:
        return f"ground_truth={gt!r}: {e}"
    if not golds or not any(str(g).strip() for g in golds):
        return f"ground_truth={gt!r} holds no non-empty answer"
    return None


def check_data_rows(path: str | Path, key: str = "data.train_files") -> int:
    """Every row of a parquet file has ``reward_model.ground_truth`` with an answer (the loop scores
    and the IG step writes the gold answer). Returns the number of rows checked."""
    path = Path(path).expanduser()
    try:
        table = pq.read_table(path, columns=["reward_model"])
    except FileNotFoundError:
        raise PreflightError(
            f"{key}={str(path)!r} does not exist; build it with scripts/prepare_data.py"
        ) from None
    except (KeyError, ValueError, OSError) as e:
        raise PreflightError(
            f"{key}={str(path)!r} has no readable reward_model column ({e}); build it with scripts/prepare_data.py"
        ) from None
    bad = [
        (i, why) for i, v in enumerate(table.column("reward_model").to_pylist()) if (why := _gold_error(v))
    ]
    if bad:
        named = "; ".join(f"row {i}: {why}" for i, why in bad[:MAX_NAMED_ROWS])
        raise PreflightError(
            f"{key}={str(path)!r}: {len(bad)} of {table.num_rows} rows have no gold answer ({named}); "
            "fix or drop them (scripts/prepare_data.py writes reward_model.ground_truth for every row)"
        )
    return table.num_rows


def handler_urls(tool_config_path: str | Path) -> list[str]:
    """Distinct handler URLs named by a tool config (``configs/tools/search_tool.yaml``)."""
    from igpo.verl.search_tool import _urls

    cfg = OmegaConf.to_container(OmegaConf.load(str(tool_config_path)), resolve=True)
    urls: list[str] = []
    for tool in (cfg or {}).get("tools") or []:
        for url in _urls((tool.get("config") or {}).get("handler_urls", "http://127.0.0.1:8000")):
            if url not in urls:
                urls.append(url)
    return urls


def check_handlers(urls: Iterable[str], timeout_s: float = 5.0) -> None:
    """Every handler answers ``GET /health`` with 200 (a handler down at start fails every tool call)."""
    for url in urls:
        try:
            status = httpx.get(url.rstrip("/") + "/health", timeout=timeout_s).status_code
        except httpx.HTTPError as e:
            status = f"no answer ({type(e).__name__})"
        if status != 200:
            raise PreflightError(
                f"the search handler at {url} is not healthy: GET /health gave {status}. Start it "
                "(`python -m handler serve ...`) or point IGPO_HANDLER_URLS / HANDLER_URL at a running one"
            )


def check_ready_to_train(config: DictConfig) -> None:
    """All start-up checks of the verl path that need no GPU (see the module docstring)."""
    check_trainer_mode(config)
    for key in ("train_files", "val_files"):
        files = config.data[key]
        for path in [files] if isinstance(files, str) else list(files):
            check_data_rows(path, key=f"data.{key}")
    tool_config = config.actor_rollout_ref.rollout.multi_turn.get("tool_config_path")
    if tool_config:
        check_handlers(handler_urls(tool_config))
