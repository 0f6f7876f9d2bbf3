"""The trainer config composes on CPU, carries the paper's Table 4 values and survives verl's
dataclass conversion of the algorithm block."""

import pytest
from hydra import compose, initialize_config_dir
from verl.utils.config import omega_conf_to_dataclass

from igpo.verl.config import IGPOAlgoConfig
from igpo.verl.estimator import igpo_settings
from igpo.verl.main import CONFIG_DIR


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
    with pytest.raises(ValueError, match="ig_basis must be one of.*'probability'"):
        igpo_settings(cfg.algorithm)


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
