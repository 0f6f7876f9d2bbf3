"""Validation-only rollouts of a local checkpoint: ``python -m igpo.local.evaluate [--checkpoint DIR]``.

Writes ``outputs/{project}/{experiment}/rollout/rollout_step_{k}.json`` (the rollout format of
:mod:`igpo.rollout_io`) for the held-out questions of the experiment's task, decoding greedily, and
prints the path. ``evaluate.sh`` scores it with ``evaluate/calculate_metrics.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from igpo.local.engine import LocalEngine, check_same_run, load_config
from igpo.local.train import DEFAULT_CONFIG
from igpo.rollout_io import rollout_dir, write_rollouts
from igpo.settings import SettingError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(DEFAULT_CONFIG))
    ap.add_argument("--checkpoint", default=None, help="checkpoint folder (default: the experiment's latest)")
    ap.add_argument("--split", choices=["test", "train"], default="test")
    ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    ap.add_argument("overrides", nargs="*", help="key=value overrides of configs/local.yaml")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config if Path(args.config).exists() else None, args.overrides)
        if (cfg.out_dir / "data" / "task.json").exists():
            check_same_run(
                cfg,
                fix="Drop the differing overrides to evaluate the run as it was trained, "
                "or name another run with experiment=NAME.",
            )
    except SettingError as e:
        for line in str(e).splitlines():
            print(f"igpo.local.evaluate: {line}", file=sys.stderr)
        return 2
    from igpo.local.tiny_policy import load_policy

    engine = LocalEngine(cfg)  # creates nothing: a run that does not exist gets no folder
    if not (engine.out / "data" / "task.json").exists():
        print(
            f"igpo.local.evaluate: no run {cfg.experiment!r}: no task in {engine.out / 'data'}; "
            "train first (bash policy_optimization.sh experiment=NAME)",
            file=sys.stderr,
        )
        return 2
    ckpt = Path(args.checkpoint) if args.checkpoint else engine.latest_checkpoint()
    if ckpt is None or not (ckpt / "policy" / "config.json").exists():
        print(
            f"igpo.local.evaluate: no checkpoint found ({ckpt or engine.out / 'checkpoints'})",
            file=sys.stderr,
        )
        return 2
    try:
        engine.prepare_task()
        engine.start_handler("handler-eval.log")
        engine.policy, engine.tokenizer = load_policy(ckpt / "policy")
        engine.step = int(ckpt.name.split("_")[-1]) if ckpt.name.startswith("step_") else 0
        questions = engine.test_q if args.split == "test" else engine.train_q
        records, ev = engine.evaluate(questions, temperature=args.temperature)
        path = write_rollouts(records, rollout_dir(cfg.project, cfg.experiment, cfg.out_root), engine.step)
    finally:
        engine.close()
    print(
        f"[igpo-local] {len(records)} rollouts of {ckpt} on the {args.split} split (F1 {ev['eval/f1']:.3f})"
    )
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
