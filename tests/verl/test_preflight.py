"""Start-up checks of the verl path (igpo/verl/preflight.py): each systematic failure stops the job
before Ray starts, with a message naming the key, file or URL."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

_TESTS = Path(__file__).resolve().parents[1]
if str(_TESTS) not in sys.path:
    sys.path.insert(0, str(_TESTS))

from helpers.handler_proc import REPO, free_port, running_handler  # noqa: E402

from igpo.verl.preflight import (  # noqa: E402
    PreflightError,
    check_data_rows,
    check_handlers,
    check_ready_to_train,
    check_trainer_mode,
    handler_urls,
)
from tests.verl.test_config import compose_trainer  # noqa: E402


def rows(golds: list) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "prompt": [[{"role": "user", "content": f"q{i}"}] for i in range(len(golds))],
            "data_source": ["nq"] * len(golds),
            "reward_model": [{"style": "rule", "ground_truth": g} for g in golds],
        }
    )


def test_the_shipped_config_passes_and_other_trainer_modes_are_refused():
    check_trainer_mode(compose_trainer())
    with pytest.raises(PreflightError, match=r"trainer.v1.trainer_mode must be 'sync'.*got 'igpo'"):
        check_trainer_mode(compose_trainer(["trainer.v1.trainer_mode=igpo"]))
    with pytest.raises(PreflightError, match=r"data.tool_config_path must be null, got 'x.yaml'"):
        check_trainer_mode(compose_trainer(["data.tool_config_path=x.yaml"]))


def test_dataset_length_filter_sees_no_tool_schemas():
    """The agent loop builds prompts without ``tools=``; the dataset must count them the same way."""
    cfg = compose_trainer()
    assert cfg.actor_rollout_ref.rollout.multi_turn.tool_config_path  # the loop's tools are configured
    assert cfg.data.tool_config_path is None  # ... but verl's dataset does not template them in


def test_data_rows_without_gold_answers_are_named(tmp_path):
    good = tmp_path / "good.parquet"
    rows([["Paris"], ["Canberra", "Canberra, ACT"]]).to_parquet(good)
    assert check_data_rows(good) == 2

    bad = tmp_path / "bad.parquet"
    rows([["Paris"], [], [""], ["Rome"]]).to_parquet(bad)
    with pytest.raises(
        PreflightError, match=r"bad.parquet'.*2 of 4 rows have no gold answer.*row 1:.*row 2:"
    ):
        check_data_rows(bad, key="data.val_files")

    nocol = tmp_path / "nocol.parquet"
    pd.DataFrame({"prompt": ["q"]}).to_parquet(nocol)
    with pytest.raises(PreflightError, match=r"data.train_files=.*nocol.parquet.*no readable reward_model"):
        check_data_rows(nocol)
    with pytest.raises(PreflightError, match=r"missing.parquet.*does not exist.*prepare_data"):
        check_data_rows(tmp_path / "missing.parquet")


def test_handler_down_at_start_is_named_and_a_running_one_passes(tmp_path, monkeypatch):
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(PreflightError, match=rf"handler at {dead} is not healthy.*no answer"):
        check_handlers([dead], timeout_s=2)
    with running_handler(tmp_path / "h") as url:
        check_handlers([url])
        monkeypatch.setenv("IGPO_HANDLER_URLS", f"{url},{url}")
        tool_config = REPO / "configs" / "tools" / "search_tool.yaml"
        assert handler_urls(tool_config) == [url]

        train, val = tmp_path / "train.parquet", tmp_path / "val.parquet"
        rows([["Paris"]]).to_parquet(train)
        rows([["Rome"]]).to_parquet(val)
        cfg = compose_trainer([f"data.train_files={train}", f"data.val_files={val}"])
        cfg.actor_rollout_ref.rollout.multi_turn.tool_config_path = str(tool_config)
        check_ready_to_train(cfg)
    with pytest.raises(PreflightError, match="is not healthy"):
        check_ready_to_train(cfg)  # the same config once the handler is gone
