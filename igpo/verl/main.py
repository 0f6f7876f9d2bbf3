"""Cluster entry point: ``python -m igpo.verl.main [hydra overrides]``.

Composes ``configs/igpo_trainer.yaml`` (which inherits verl's ``ppo_trainer`` through
``pkg://verl.trainer.config``) and runs verl's V1 PPO trainer inside a Ray task runner that first
imports :mod:`igpo.verl`, so the ``igpo`` estimator is registered in the process that computes
advantages. ``--cfg job --resolve`` (hydra) prints the composed config without training.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")


def check_cluster_ready(config: DictConfig) -> None:
    """Fail early, with a message that says what to do, when the verl path cannot run here."""
    import torch

    if not torch.cuda.is_available():
        raise SystemExit(
            "igpo.verl.main: no CUDA GPU is visible. The verl path needs GPUs (vLLM rollout, FSDP actor). "
            "On a CPU machine run the embedded default instead: `bash policy_optimization.sh` "
            "(see README, 'Embedded default')."
        )
    want = int(config.trainer.n_gpus_per_node) * int(config.trainer.nnodes)
    have = torch.cuda.device_count() * int(config.trainer.nnodes)
    if have < want:
        raise SystemExit(
            f"igpo.verl.main: trainer.n_gpus_per_node x nnodes = {want} GPUs requested but {have} are visible; "
            f"pass trainer.n_gpus_per_node={torch.cuda.device_count()}"
        )


def make_task_runner():
    """A Ray actor that registers IGPO's pieces, then runs verl's V1 task runner."""
    import ray
    from verl.trainer.main_ppo import TaskRunnerV1

    base = TaskRunnerV1.__ray_metadata__.modified_class

    @ray.remote(num_cpus=1)
    class IGPOTaskRunner(base):  # type: ignore[misc, valid-type]
        def run(self, config: DictConfig) -> None:
            import igpo.verl  # noqa: F401  registers adv_estimator=igpo in this process
            from igpo.verl.trainer import install_trainer

            install_trainer()  # trainer.v1.trainer_mode=sync builds IGPOTrainer here
            super().run(config)

    return IGPOTaskRunner


@hydra.main(config_path=CONFIG_DIR, config_name="igpo_trainer", version_base=None)
def main(config: DictConfig) -> None:
    """Validate the config the way verl does, then train."""
    from verl.trainer.main_ppo import run_ppo
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    import igpo.verl  # noqa: F401
    from igpo.verl.estimator import igpo_settings
    from igpo.verl.preflight import check_ready_to_train

    igpo_settings(config.algorithm)  # unknown keys or bad values fail here, before Ray starts
    check_cluster_ready(config)
    check_ready_to_train(config)  # trainer mode, data rows, handler health: before Ray starts
    validate_config(
        config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config)
    )
    run_ppo(config, task_runner_class=make_task_runner())


if __name__ == "__main__":
    main()
