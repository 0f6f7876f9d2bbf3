"""Cluster entry point: ``python -m igpo.verl.main [hydra overrides]``.

Composes ``configs/igpo_trainer.yaml`` (which inherits verl's ``ppo_trainer`` through
``pkg://verl.trainer.config``) and runs verl's V1 PPO trainer inside a Ray task runner that first
imports :mod:`igpo.verl`, so the ``igpo`` estimator is registered in the process that computes
advantages. ``--dry-run`` checks and prints the composed config without training; ``--help`` prints
the usage.

Before hydra starts a job (and makes its ``outputs/DATE/TIME`` folder) the config is composed and
checked: IGPO's settings (:func:`check_config`, the rules of :mod:`igpo.settings`), the GPUs and data
(:func:`check_cluster_ready`), and that a run to be resumed was made with the same training settings
(:func:`check_resume`). Each failure is one message, without a traceback.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from igpo.settings import SettingError, check_settings

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")

USAGE = """usage: python -m igpo.verl.main [--dry-run | --check | --help] [hydra overrides ...]

Trains IGPO with verl on GPUs (configs/igpo_trainer.yaml: the paper's Table 4 setting).
  --dry-run   check the settings and print the composed config; trains nothing
  --check     check the settings, GPUs, data files and resume; trains nothing, prints nothing
  --help      this text
Overrides use hydra's key=value syntax, e.g.
  algorithm.igpo.reward_mode=f1        outcome reward only (GRPO); f1+ig (IGPO, default) or ig
  algorithm.igpo.norm=joint            z-score IG and outcome together (default: separate)
  algorithm.gamma=0.9                  turn discount in [0, 1]
  trainer.experiment_name=NAME         a new run (checkpoints in checkpoints/PROJECT/NAME)
  trainer.resume_mode=disable          start afresh in the same run folder instead of resuming
"""

#: verl keys holding IGPO's checked settings (canonical names of igpo.settings.RULES), beside
#: algorithm.igpo.* and algorithm.gamma (checked by igpo_settings).
VERL_SETTING_KEYS: dict[str, str] = {
    "lr": "actor_rollout_ref.actor.optim.lr",
    "group_size": "actor_rollout_ref.rollout.n",
    "prompts_per_step": "data.train_batch_size",
    "steps": "trainer.total_training_steps",
    "epochs": "trainer.total_epochs",
    "clip_ratio": "actor_rollout_ref.actor.clip_ratio",
    "kl_coef": "actor_rollout_ref.actor.kl_loss_coef",
    "temperature": "actor_rollout_ref.rollout.temperature",
    "max_turns": "actor_rollout_ref.rollout.multi_turn.max_assistant_turns",
}

#: Config keys that shape training: a checkpoint is resumed only when they equal those it was made with.
VERL_RUN_KEYS: tuple[str, ...] = (
    "algorithm",
    "data.train_files",
    "data.train_batch_size",
    "data.max_prompt_length",
    "data.max_response_length",
    "data.seed",
    "actor_rollout_ref.model.path",
    "actor_rollout_ref.actor.optim",
    "actor_rollout_ref.actor.ppo_mini_batch_size",
    "actor_rollout_ref.actor.ppo_epochs",
    "actor_rollout_ref.actor.clip_ratio",
    "actor_rollout_ref.actor.use_kl_loss",
    "actor_rollout_ref.actor.kl_loss_coef",
    "actor_rollout_ref.actor.kl_loss_type",
    "actor_rollout_ref.actor.entropy_coeff",
    "actor_rollout_ref.actor.loss_agg_mode",
    "actor_rollout_ref.rollout.n",
    "actor_rollout_ref.rollout.temperature",
    "actor_rollout_ref.rollout.multi_turn.max_assistant_turns",
    "actor_rollout_ref.rollout.multi_turn.max_tool_response_length",
)
#: Written beside verl's checkpoints: the VERL_RUN_KEYS values of the run that made them.
RUN_SETTINGS = "igpo_run_settings.json"


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


def check_config(config: DictConfig) -> dict[str, Any]:
    """Check IGPO's settings in the composed config; raise :class:`SettingError`, one line per bad key."""
    from igpo.verl.estimator import igpo_settings
    from igpo.verl.tracking import check_loggers

    problems = []
    settings: dict[str, Any] = {}
    try:
        settings = igpo_settings(config.algorithm)
    except SettingError as e:
        problems.append(str(e))
    values = {k: OmegaConf.select(config, path) for k, path in VERL_SETTING_KEYS.items()}
    try:
        check_settings(values, VERL_SETTING_KEYS, optional={"steps", "max_turns"})
    except SettingError as e:
        problems.append(str(e))
    try:
        check_loggers(OmegaConf.to_container(config.trainer.logger, resolve=True))
    except SettingError as e:
        problems.append(str(e))
    if problems:
        raise SettingError("\n".join(problems))
    return settings


def run_settings(config: DictConfig) -> dict[str, Any]:
    """The values of :data:`VERL_RUN_KEYS` in ``config`` (resolved, JSON-ready)."""
    out = {}
    for key in VERL_RUN_KEYS:
        value = OmegaConf.select(config, key)
        out[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    return out


def _flat(prefix: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return {k: v for key, sub in value.items() for k, v in _flat(f"{prefix}.{key}", sub).items()}
    return {prefix: value}


def check_resume(config: DictConfig) -> Path | None:
    """Refuse to resume a checkpoint made with other training settings; return the run folder to record.

    verl resumes ``trainer.default_local_dir`` (``resume_mode=auto``) or ``trainer.resume_from_path``;
    the settings of the run that saved there are in its :data:`RUN_SETTINGS`. On a difference a
    :class:`SettingError` names each key with both values and the ways on.
    """
    mode = str(config.trainer.get("resume_mode", "auto"))
    run_dir = Path(str(config.trainer.default_local_dir))
    if mode == "disable":
        return run_dir
    if mode == "resume_path" and config.trainer.get("resume_from_path"):
        saved_dir = Path(str(config.trainer.resume_from_path)).parent
    else:
        saved_dir = run_dir
    saved_file = saved_dir / RUN_SETTINGS
    if not (saved_dir / "latest_checkpointed_iteration.txt").exists() or not saved_file.is_file():
        return run_dir
    saved = _flat("", json.loads(saved_file.read_text()))
    now = _flat("", run_settings(config))
    diffs = [(k[1:], saved[k], v) for k, v in now.items() if k in saved and saved[k] != v]
    if diffs:
        lines = [f"{saved_dir} holds checkpoints of a run made with other settings:"]
        lines += [f"  {k}: the run has {old!r}, asked for {new!r}" for k, old, new in diffs]
        lines.append(
            "Resuming would mix two runs. Use trainer.experiment_name=NAME (or IGPO_EXPERIMENT) for a new run, "
            "or trainer.resume_mode=disable to start afresh there (its checkpoints are then overwritten)."
        )
        raise SettingError("\n".join(lines))
    return run_dir


def record_run(config: DictConfig, run_dir: Path | None) -> None:
    """Write the run's training settings beside its checkpoints (read by :func:`check_resume`); a
    validation-only run (``trainer.val_only``) trains nothing and records nothing."""
    if run_dir is None or config.trainer.get("val_only", False):
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RUN_SETTINGS).write_text(json.dumps(run_settings(config), indent=1, default=str) + "\n")


def report_setting_error(prog: str, error: SettingError) -> int:
    """Print a :class:`SettingError` one line per bad key, prefixed with ``prog``; the exit status 2."""
    for line in str(error).splitlines():
        print(f"{prog}: {line}", file=sys.stderr)
    return 2


def compose_config(overrides: Sequence[str]) -> DictConfig:
    """``configs/igpo_trainer.yaml`` with hydra ``overrides``, composed without starting a hydra job."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose(config_name="igpo_trainer", overrides=list(overrides))


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
    """Check the settings and the GPUs, then train."""
    check_config(config)  # already checked by cli(); kept for callers of main() itself
    check_cluster_ready(config)
    train(config)


def train(config: DictConfig) -> None:
    """The start-up checks that need no GPU, verl's own config validation, then verl's trainer
    (shared by the GPU entry point and the CPU test bed, ``igpo.verl.cpu.run``)."""
    from verl.trainer.main_ppo import run_ppo
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    import igpo.verl  # noqa: F401
    from igpo.verl.preflight import check_ready_to_train

    check_ready_to_train(config)  # trainer mode, data rows, handler health: before Ray starts
    validate_config(
        config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config)
    )
    run_ppo(config, task_runner_class=make_task_runner())


def cli(argv: Sequence[str]) -> int:
    """``--help``; ``--dry-run`` (check, print the config); ``--check`` (check settings, GPUs, data and
    resume, start nothing); else check everything, then hand the overrides to hydra's job."""
    argv = list(argv)
    if argv[:1] in (["--help"], ["-h"]):
        print(USAGE)
        return 0
    mode = argv[0] if argv[:1] in (["--dry-run"], ["--check"]) else None
    if mode:
        argv = argv[1:]
    if any(a.startswith("-") for a in argv):  # hydra's own flags (--cfg, --multirun, ...): hydra decides
        sys.argv = [sys.argv[0], *argv]
        main()
        return 0
    from igpo.verl.tracking import wandb_logger_override

    try:
        config = compose_config(argv)
        wandb, note = wandb_logger_override(list(config.trainer.logger), argv, os.environ)
        if note:
            print(f"igpo.verl.main: {note}", file=sys.stderr)
        if wandb:  # WANDB_API_KEY set and wandb installed: log there too (hydra's job gets it as well)
            argv = [*argv, wandb]
            config = compose_config(argv)
    except Exception as e:  # hydra's override grammar or an unknown config key: one line, no traceback
        print(f"igpo.verl.main: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    try:
        check_config(config)
        if mode == "--dry-run":
            print(OmegaConf.to_yaml(config, resolve=True), end="")
            return 0
        check_cluster_ready(config)
        run_dir = check_resume(config)
        if mode == "--check":  # the entry script checks before it starts a handler
            return 0
    except SettingError as e:
        return report_setting_error("igpo.verl.main", e)
    record_run(config, run_dir)
    sys.argv = [sys.argv[0], *argv]
    main()
    return 0


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
