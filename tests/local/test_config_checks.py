"""The local engine refuses bad settings and changed settings before any work, and leaves nothing behind."""

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from igpo.local.engine import RunMismatch, check_same_run, load_config, open_run
from igpo.local.train import DEFAULT_CONFIG
from igpo.settings import SettingError

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("reward_mode=bogus", "reward_mode='bogus' is not allowed: expected one of 'f1+ig', 'f1', 'ig'"),
        ("gamma=1.5", "gamma=1.5 is not allowed: expected a number in [0, 1]"),
        ("group_size=1", "group_size=1 is not allowed: expected an integer >= 2"),
        ("steps=0", "steps=0 is not allowed: expected an integer >= 1"),
        ("lr=0", "lr=0.0 is not allowed: expected a number > 0"),
        ("norm=zscore", "norm='zscore' is not allowed: expected one of 'separate', 'joint'"),
        ("steps=abc", "steps: Value 'abc' of type 'str' could not be converted to Integer"),
        ("stpes=3", "unknown setting 'stpes' (not a field of configs/local.yaml); did you mean 'steps'?"),
        ("hops=[4]", "hops=[4] is not allowed: expected a non-empty subset of [1, 2, 3]"),
        ("heads=3", "hidden_size=128 is not allowed: expected a multiple of heads=3"),
    ],
)
def test_load_config_refuses_naming_key_and_value(override, message):
    with pytest.raises(SettingError) as e:
        load_config(DEFAULT_CONFIG, [override])
    assert str(e.value) == message


def test_bad_value_stops_the_training_entry_within_seconds_leaving_nothing(tmp_path):
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "igpo.local.train", "reward_mode=bogus", f"out_root={tmp_path / 'out'}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.strip() == (
        "igpo.local.train: reward_mode='bogus' is not allowed: expected one of 'f1+ig', 'f1', 'ig'"
    )
    assert time.monotonic() - t0 < 60
    assert not (tmp_path / "out").exists()  # no task, handler or warm-up was started


def _record_run(tmp_path, overrides=()):
    cfg = load_config(DEFAULT_CONFIG, [f"out_root={tmp_path}", *overrides])
    open_run(cfg, log=lambda *a: None)
    return cfg


def test_changed_training_setting_is_refused_naming_both_values(tmp_path):
    _record_run(tmp_path)
    cfg = load_config(DEFAULT_CONFIG, [f"out_root={tmp_path}", "reward_mode=f1", "lr=1e-4"])
    with pytest.raises(RunMismatch) as e:
        open_run(cfg, log=lambda *a: None)
    msg = str(e.value)
    assert "reward_mode: the run has 'f1+ig', asked for 'f1'" in msg
    assert "lr: the run has 5e-05, asked for 0.0001" in msg
    assert "experiment=NAME" in msg and "resume=false" in msg
    assert json.loads((cfg.out_dir / "config.json").read_text())["reward_mode"] == "f1+ig"  # untouched


def test_settings_that_do_not_shape_training_may_change_on_resume(tmp_path):
    _record_run(tmp_path)
    cfg = _record_run(tmp_path, ["steps=60", "eval_every=5", "progress=false", "micro_batch=8"])
    assert json.loads((cfg.out_dir / "config.json").read_text())["steps"] == 60


def test_a_checkpoint_without_config_json_is_compared_too(tmp_path):
    cfg = load_config(DEFAULT_CONFIG, [f"out_root={tmp_path}"])
    ckpt = cfg.out_dir / "checkpoints" / "step_30"
    ckpt.mkdir(parents=True)
    torch.save({"config": asdict(cfg), "step": 30}, ckpt / "trainer.pt")
    with pytest.raises(RunMismatch, match="task_seed: the run has 0, asked for 1"):
        check_same_run(load_config(DEFAULT_CONFIG, [f"out_root={tmp_path}", "task_seed=1"]))


def test_resume_false_moves_the_old_run_aside_and_starts_fresh(tmp_path):
    old = _record_run(tmp_path)
    (old.out_dir / "metrics.jsonl").write_text('{"step": 1}\n')
    cfg = _record_run(tmp_path, ["reward_mode=f1", "resume=false"])
    assert json.loads((cfg.out_dir / "config.json").read_text())["reward_mode"] == "f1"
    assert not (cfg.out_dir / "metrics.jsonl").exists()
    (aside,) = [p for p in cfg.out_dir.parent.iterdir() if p.name.startswith(f"{cfg.experiment}.replaced-")]
    assert (aside / "metrics.jsonl").exists()


def test_evaluating_a_run_that_does_not_exist_creates_nothing(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "igpo.local.evaluate", f"out_root={tmp_path}", "experiment=nope"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert r.returncode == 2 and "no run 'nope'" in r.stderr and "Traceback" not in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_evaluating_with_other_training_settings_is_refused(tmp_path):
    cfg = _record_run(tmp_path)
    (cfg.out_dir / "data").mkdir()
    (cfg.out_dir / "data" / "task.json").write_text("{}")
    r = subprocess.run(
        [sys.executable, "-m", "igpo.local.evaluate", f"out_root={tmp_path}", "ig_basis=prob"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert r.returncode == 2 and "ig_basis: the run has 'logprob', asked for 'prob'" in r.stderr


def test_learning_curve_second_panel_says_its_lines_share_the_batches(tmp_path, monkeypatch):
    import matplotlib.figure

    from igpo.local.train import plot_curve

    rows = [
        {"step": 1, "igpo/outcome_f1_mean": 0.5, "igpo/zero_adv_group_share_grpo": 0.5},
        {"step": 1, "igpo/zero_adv_group_share_igpo": 0.1, "eval/f1": 0.4},
    ]
    rows[0]["igpo/zero_adv_group_share_igpo"] = 0.1
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    titles = []
    real = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(
        matplotlib.figure.Figure,
        "savefig",
        lambda self, *a, **k: (titles.extend(ax.get_title() for ax in self.axes), real(self, *a, **k)),
    )
    plot_curve(tmp_path / "m.jsonl", tmp_path / "c.png", "run (f1+ig)")
    assert titles[0] == "run (f1+ig)" and "same batches" in titles[1]


def test_evaluation_handler_log_does_not_overwrite_the_training_one(tmp_path):
    from igpo.local.engine import LocalEngine

    cfg = load_config(DEFAULT_CONFIG, [f"out_root={tmp_path}"])
    cfg.out_dir.mkdir(parents=True)
    (cfg.out_dir / "handler.log").write_text("training handler\n")
    engine = LocalEngine(cfg, log=lambda *a: None)
    engine.corpus = tmp_path / "corpus.jsonl"
    engine.corpus.write_text(json.dumps({"id": "1", "contents": '"Ann"\nAnn works at Acme.'}) + "\n")
    try:
        engine.start_handler("handler-eval.log")
    finally:
        engine.close()
    assert (cfg.out_dir / "handler.log").read_text() == "training handler\n"
    assert (cfg.out_dir / "handler-eval.log").stat().st_size > 0
