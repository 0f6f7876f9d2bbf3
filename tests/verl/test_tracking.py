"""trainer.logger: wandb only when WANDB_API_KEY is set and wandb importable; bad trackers named."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from igpo.settings import SettingError
from igpo.verl.tracking import check_loggers, wandb_logger_override

REPO = Path(__file__).resolve().parents[2]
BASE = ["console", "tensorboard"]


def test_wandb_is_added_only_with_the_key_and_the_package():
    yes, no = (lambda: True), (lambda: False)
    key = {"WANDB_API_KEY": "k"}
    assert wandb_logger_override(BASE, [], key, yes) == ("trainer.logger=[console,tensorboard,wandb]", None)
    assert wandb_logger_override(BASE, [], {}, yes) == (None, None)
    assert wandb_logger_override(BASE, [], {"WANDB_API_KEY": ""}, yes) == (None, None)
    override, note = wandb_logger_override(BASE, [], key, no)
    assert override is None and "wandb package is not installed" in note
    # the user's own choice stands, and wandb is not listed twice
    assert wandb_logger_override(BASE, ["trainer.logger=[console]"], key, yes) == (None, None)
    assert wandb_logger_override([*BASE, "wandb"], [], key, yes) == (None, None)


def test_unknown_tracker_and_missing_wandb_are_named():
    check_loggers(["console", "tensorboard", "file"])
    with pytest.raises(SettingError, match=r"trainer.logger: 'tensorbord' is not a verl tracker"):
        check_loggers(["console", "tensorbord"])
    with pytest.raises(SettingError, match="trainer.logger: 'wandb' is listed .* not installed"):
        check_loggers(["wandb"], wandb_installed=lambda: False)


def _dry_run(tmp_path, env, *args):
    return subprocess.run(
        [sys.executable, "-m", "igpo.verl.main", "--dry-run", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **env},
    )


def test_dry_run_adds_wandb_with_key_and_package_and_refuses_bad_tracker(tmp_path):
    fake = tmp_path / "site"
    (fake / "wandb").mkdir(parents=True)
    (fake / "wandb" / "__init__.py").write_text("")  # an importable wandb; nothing is logged in a dry run
    env = {"PYTHONPATH": f"{REPO}{os.pathsep}{fake}", "WANDB_API_KEY": "secret-key-123"}
    r = _dry_run(tmp_path, env)
    assert r.returncode == 0, r.stderr
    assert yaml.safe_load(r.stdout)["trainer"]["logger"] == ["console", "tensorboard", "wandb"]
    assert "secret-key-123" not in r.stdout + r.stderr
    bad = _dry_run(tmp_path, {"PYTHONPATH": str(REPO)}, "trainer.logger=[console,tensorbord]")
    assert bad.returncode == 2 and "trainer.logger: 'tensorbord' is not a verl tracker" in bad.stderr
