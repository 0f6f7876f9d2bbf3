"""The trainer config composes on CPU, carries the paper's Table 4 values and survives verl's
dataclass conversion of the algorithm block."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from verl.utils.config import omega_conf_to_dataclass

from igpo.settings import SettingError
from igpo.verl.config import IGPOAlgoConfig
from igpo.verl.estimator import igpo_settings
from igpo.verl.main import CONFIG_DIR, check_config, check_resume, record_run

REPO = Path(__file__).resolve().parents[2]


def compose_trainer(overrides=()):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose(config_name="igpo_trainer", overrides=list(overrides))


@pytest.fixture(scope="module")
def cfg():
    return compose_trainer()


def test_paper_table4_settings(cfg):
    arr = cfg.actor_rollout_ref
    assert cfg.data.train_batch_size == 32
    assert arr.rollout.n == 16
    assert arr.actor.ppo_mini_batch_size * arr.rollout.n == 512
    assert arr.rollout.multi_turn.max_assistant_turns == 10
    assert arr.actor.optim.lr == 1e-6
    assert arr.rollout.temperature == 1.0
    assert arr.actor.use_kl_loss and arr.actor.kl_loss_coef == 0.001
    assert arr.actor.ulysses_sequence_parallel_size == 4
    assert arr.rollout.tensor_model_parallel_size == 1
    assert arr.rollout.name == "vllm"
    assert cfg.algorithm.adv_estimator == "igpo"
    assert cfg.algorithm.use_kl_in_reward is False
    assert cfg.trainer.n_gpus_per_node == 8 and cfg.trainer.nnodes == 1


def test_algorithm_block_converts_to_dataclass_and_keeps_igpo(cfg):
    algo = omega_conf_to_dataclass(cfg.algorithm)
    assert isinstance(algo, IGPOAlgoConfig)
    assert algo.igpo["reward_mode"] == "f1+ig" and algo.igpo["norm"] == "separate"
    s = igpo_settings(algo)
    assert s["gamma"] == 1.0 and s["reward_mode"] == "f1+ig"


def test_overrides_reach_the_estimator_settings():
    cfg = compose_trainer(
        ["algorithm.igpo.reward_mode=f1", "algorithm.gamma=0.9", "algorithm.igpo.norm=joint"]
    )
    s = igpo_settings(cfg.algorithm)
    assert (s["reward_mode"], s["gamma"], s["norm"]) == ("f1", 0.9, "joint")


def test_bad_override_is_named():
    cfg = compose_trainer(["algorithm.igpo.ig_basis=probability"])
    with pytest.raises(ValueError) as e:
        igpo_settings(cfg.algorithm)
    assert str(e.value) == (
        "algorithm.igpo.ig_basis='probability' is not allowed: expected one of 'logprob', 'prob'"
    )


def test_check_config_names_every_bad_igpo_and_trainer_value():
    cfg = compose_trainer(
        [
            "algorithm.igpo.reward_mode=bogus",
            "algorithm.gamma=1.5",
            "trainer.total_training_steps=abc",
            "actor_rollout_ref.rollout.n=1",
            "actor_rollout_ref.actor.optim.lr=0",
        ]
    )
    with pytest.raises(SettingError) as e:
        check_config(cfg)
    assert str(e.value).splitlines() == [
        "algorithm.igpo.reward_mode='bogus' is not allowed: expected one of 'f1+ig', 'f1', 'ig'",
        "algorithm.gamma=1.5 is not allowed: expected a number in [0, 1]",
        "actor_rollout_ref.actor.optim.lr=0 is not allowed: expected a number > 0",
        "actor_rollout_ref.rollout.n=1 is not allowed: expected an integer >= 2",
        "trainer.total_training_steps='abc' is not allowed: expected an integer >= 1",
    ]
    check_config(compose_trainer())  # the shipped config passes


def _cli(args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "igpo.verl.main", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def test_dry_run_refuses_bad_values_and_types_without_a_traceback(tmp_path):
    r = _cli(["--dry-run", "algorithm.igpo.reward_mode=bogus", "trainer.total_training_steps=abc"], tmp_path)
    assert r.returncode == 2, r.stdout
    assert r.stderr.strip().splitlines() == [
        "igpo.verl.main: algorithm.igpo.reward_mode='bogus' is not allowed: expected one of 'f1+ig', 'f1', 'ig'",
        "igpo.verl.main: trainer.total_training_steps='abc' is not allowed: expected an integer >= 1",
    ]
    assert list(tmp_path.iterdir()) == []  # no hydra outputs/DATE/TIME folder


def test_failed_start_leaves_no_hydra_folder_and_help_prints_usage(tmp_path):
    r = _cli(["algorithm.gamma=2"], tmp_path)
    assert r.returncode == 2 and "algorithm.gamma=2 is not allowed" in r.stderr
    assert list(tmp_path.iterdir()) == []
    h = _cli(["--help"], tmp_path)
    assert h.returncode == 0 and "usage: python -m igpo.verl.main" in h.stdout


def test_resume_with_other_training_settings_is_refused(tmp_path):
    run = tmp_path / "ckpt"
    cfg = compose_trainer([f"trainer.default_local_dir={run}"])
    assert check_resume(cfg) == run  # nothing to resume yet
    record_run(cfg, run)
    (run / "latest_checkpointed_iteration.txt").write_text("20")
    assert (
        check_resume(compose_trainer([f"trainer.default_local_dir={run}", "trainer.total_epochs=3"])) == run
    )
    changed = compose_trainer([f"trainer.default_local_dir={run}", "algorithm.igpo.reward_mode=f1"])
    with pytest.raises(SettingError) as e:
        check_resume(changed)
    assert "algorithm.igpo.reward_mode: the run has 'f1+ig', asked for 'f1'" in str(e.value)
    assert "trainer.experiment_name=NAME" in str(e.value) and "trainer.resume_mode=disable" in str(e.value)
    fresh = compose_trainer(
        [f"trainer.default_local_dir={run}", "algorithm.igpo.reward_mode=f1", "trainer.resume_mode=disable"]
    )
    assert check_resume(fresh) == run


def test_agent_loop_and_tool_configs_exist_and_name_our_classes(cfg):
    from pathlib import Path

    import yaml

    root = Path(CONFIG_DIR).parent
    loop_cfg = yaml.safe_load((root / cfg.actor_rollout_ref.rollout.agent.agent_loop_config_path).read_text())
    assert {e["name"]: e["_target_"] for e in loop_cfg}[
        "igpo_search"
    ] == "igpo.verl.agent_loop.IGPOSearchAgentLoop"
    assert cfg.actor_rollout_ref.rollout.agent.default_agent_loop == "igpo_search"
    tools = yaml.safe_load((root / cfg.actor_rollout_ref.rollout.multi_turn.tool_config_path).read_text())[
        "tools"
    ]
    assert {t["config"]["name"] for t in tools} == {"search", "web_search", "browse_webpage"}


def test_a_validation_only_run_records_no_training_settings(tmp_path):
    """``evaluate.sh`` runs verl with trainer.val_only=true: it must not overwrite the training run's record."""
    run = tmp_path / "ckpt"
    record_run(compose_trainer([f"trainer.default_local_dir={run}", "trainer.val_only=true"]), run)
    assert not run.exists()
    record_run(compose_trainer([f"trainer.default_local_dir={run}"]), None)  # nothing to record into
    assert not run.exists()
    record_run(compose_trainer([f"trainer.default_local_dir={run}"]), run)
    assert (run / "igpo_run_settings.json").is_file()
