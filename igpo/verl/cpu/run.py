"""``python -m igpo.verl.cpu.run [hydra overrides]``: verl's real trainer on the CPU test bed.

What ``IGPO_ENGINE=verl bash policy_optimization.sh`` runs on a machine without a GPU. It

1. prepares the embedded default's assets once (``outputs/igpo-verl-cpu/assets``: the synthetic task
   as verl parquet rows and its corpus, the warmed tiny policy as a Hugging Face folder and its
   tokenizer on its own, so verl's tokenizer loader picks the right class); later runs reuse them;
2. starts the search handler on the task's corpus (``HANDLER_URL`` names a running one instead);
3. composes ``configs/igpo_trainer.yaml`` with ``+platform=cpu`` (``configs/platform/cpu.yaml``) and
   the overrides given, checks IGPO's settings, the run to resume and Ray's resources, and runs verl's
   trainer exactly as the GPU entry point does (:func:`igpo.verl.main.train`);
4. prints where the metrics (one JSON line per step, verl's file logger), the checkpoints and the
   validation dump are.

Examples::

    python -m igpo.verl.cpu.run                                   # 2 IGPO steps, 1 worker
    python -m igpo.verl.cpu.run trainer.n_gpus_per_node=2 \\
        actor_rollout_ref.actor.ulysses_sequence_parallel_size=2   # 2 workers, Ulysses SP 2
    python -m igpo.verl.cpu.run trainer.total_training_steps=3    # resume the run to step 3
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from igpo.verl.cpu import CPU_ENV

REPO = Path(__file__).resolve().parents[3]
ASSETS = Path("outputs") / "igpo-verl-cpu" / "assets"  # IGPO_CPU_ASSETS overrides
#: Logical CPUs each worker bundle asks Ray for (verl's resource pools), plus the driver-side actors.
CPUS_PER_WORKER, CPUS_EXTRA = 3, 3


@dataclass(frozen=True)
class Assets:
    """The files the trainer reads: task rows, corpus, policy and its tokenizer."""

    train: Path
    test: Path
    corpus: Path
    model: Path
    tokenizer: Path


def assets_root() -> Path:
    """Where the test bed's assets live (``IGPO_CPU_ASSETS``, default ``outputs/igpo-verl-cpu/assets``)."""
    return Path(os.environ.get("IGPO_CPU_ASSETS") or ASSETS)


def asset_engine(root: Path | None = None, overrides: tuple[str, ...] = (), log=print):
    """The embedded default's local engine whose experiment folder (``root/policy``) holds the test
    bed's assets; ``overrides`` are configs/local.yaml fields (e.g. a shorter warm-up in tests)."""
    from igpo.local.engine import LocalEngine, load_config
    from igpo.local.train import DEFAULT_CONFIG

    root = Path(root or assets_root())
    fields = [f"out_root={root.parent}", f"project={root.name}", "experiment=policy", *overrides]
    return LocalEngine(load_config(DEFAULT_CONFIG, fields), log=log)


def prepare_assets(engine, log=print) -> Assets:
    """The task (written once) and the warmed policy (warmed once, about a minute, against the engine's
    handler, which must be running); its tokenizer is copied to a folder of its own."""
    from igpo.local.tiny_policy import copy_tokenizer

    warm = engine.out / "policy_warm"
    if not (warm / "config.json").exists():
        log("[igpo-verl-cpu] warming up the tiny policy once (the embedded default's warm-up)")
        engine.build_policy()
    tokenizer = engine.out / "tokenizer"  # no config.json beside it: verl loads the tokenizer's own class
    copy_tokenizer(warm, tokenizer)
    data = engine.out / "data"
    return Assets(data / "train.parquet", data / "test.parquet", data / "corpus.jsonl", warm, tokenizer)


def check_ray_resources(config) -> None:
    """verl's worker bundles need ``3`` logical CPUs and one (fake) GPU each; too few CPUs make Ray wait
    silently for ever, so refuse that before Ray starts."""
    from igpo.settings import SettingError

    workers = int(config.trainer.n_gpus_per_node) * int(config.trainer.nnodes)
    need = CPUS_PER_WORKER * workers + CPUS_EXTRA
    have = config.ray_kwargs.ray_init.get("num_cpus")
    if have is None or int(have) < need:
        raise SettingError(
            f"ray_kwargs.ray_init.num_cpus={have!r} is too few for {workers} worker(s): verl asks Ray for "
            f"{CPUS_PER_WORKER} CPUs per worker plus {CPUS_EXTRA}; set ray_kwargs.ray_init.num_cpus={need} "
            "(logical CPUs: more than the machine has is fine)"
        )
    sp = int(config.actor_rollout_ref.actor.ulysses_sequence_parallel_size)
    if workers % sp:
        raise SettingError(
            f"actor_rollout_ref.actor.ulysses_sequence_parallel_size={sp} must divide the {workers} worker(s) "
            "(trainer.n_gpus_per_node x trainer.nnodes)"
        )


def compose(overrides: list[str], assets: Assets, handler_url: str, run_name: str):
    """The trainer config of a CPU run: ``+platform=cpu``, the assets, then the user's overrides."""
    from omegaconf import open_dict

    from igpo.verl.main import compose_config

    base = [
        "+platform=cpu",
        f"actor_rollout_ref.model.path={assets.model.resolve()}",
        f"actor_rollout_ref.model.tokenizer_path={assets.tokenizer.resolve()}",
        f"data.train_files={assets.train.resolve()}",
        f"data.val_files={assets.test.resolve()}",
        f"actor_rollout_ref.rollout.multi_turn.tool_config_path={REPO / 'configs/tools/search_cpu.yaml'}",
        f"actor_rollout_ref.rollout.agent.agent_loop_config_path={REPO / 'configs/agent_loop_cpu.yaml'}",
    ]
    config = compose_config(base + list(overrides))
    run_dir = Path(str(config.trainer.default_local_dir))
    with open_dict(config):
        config.ray_kwargs.ray_init.num_gpus = int(config.trainer.n_gpus_per_node) * int(config.trainer.nnodes)
        if config.trainer.get("validation_data_dir") is None:
            config.trainer.validation_data_dir = str(run_dir / "validation")
        env = config.ray_kwargs.ray_init.runtime_env.env_vars
        env["IGPO_HANDLER_URLS"] = handler_url  # the tool config reads it in the agent-loop workers
        env["VERL_FILE_LOGGER_PATH"] = str((run_dir / f"metrics-{run_name}.jsonl").resolve())
    return config


def main(argv: list[str] | None = None) -> int:
    """Prepare, start the handler, check, train; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["--help"], ["-h"]):
        print(__doc__)
        return 0
    os.environ.update(CPU_ENV)  # before verl picks its platform in this process
    from igpo.settings import SettingError
    from igpo.verl.main import check_config, check_resume, record_run, report_setting_error, train

    engine = asset_engine()
    engine.prepare_task()
    engine.handler_url = os.environ.get("HANDLER_URL") or None
    handler_url = engine.start_handler()  # the task's corpus (unless HANDLER_URL names a running handler)
    os.environ["IGPO_HANDLER_URLS"] = handler_url  # the tool config, here and (runtime env) in the workers
    print(f"[igpo-verl-cpu] search handler on {handler_url}")
    try:
        assets = prepare_assets(engine)
        run_name = time.strftime("%Y%m%d-%H%M%S")
        config = compose(argv, assets, handler_url, run_name)
        try:
            check_config(config)
            check_ray_resources(config)
            run_dir = check_resume(config)
        except SettingError as e:
            return report_setting_error("igpo.verl.cpu.run", e)
        record_run(config, run_dir)
        train(config)
        metrics = config.ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH
        print("\n[igpo-verl-cpu] verl's trainer finished on the CPU test bed:")
        print(f"  metrics (JSON lines, one per step)  {metrics}")
        print(f"  checkpoints                         {config.trainer.default_local_dir}")
        print(f"  validation dump                     {config.trainer.validation_data_dir}")
        return 0
    finally:
        engine.close()


if __name__ == "__main__":
    sys.exit(main())
