"""Why IGPO loses where it loses: decompose its advantages into the IG part and the outcome part.

Usage::

    python scripts/analyze_ig_scale.py RUN_DIR [--batches 4] [--json]

``RUN_DIR`` is an embedded-default experiment folder (``data/`` and ``policy_warm/``, e.g. a variant's
``warm`` folder from ``scripts/bench_learning.py``). The script samples ``--batches`` training batches with
that policy (no update) and, with γ = 1 and separate z-scoring (the paper's IGPO), splits each rollout's
advantage at every turn into the normalized-IG return and the normalized-outcome return (they add up to
IGPO's advantage). It prints JSON:

* ``scale``: mean |IG part| and mean |outcome part| over the model turns of groups with mixed outcomes;
* ``noise``: share of groups whose IG values span < 0.05 nats yet whose IG part reaches |z| >= 0.5
  (z-scoring turning a near-tie into unit-size advantages);
* ``first_turn_ig_part_by_searches``: the mean IG part of the first turn's advantage by the number of
  searches in the rollout (mean-centred IG summed over turns favours or punishes long searches);
* ``right_rollouts_pushed_down``: among rollouts with F1 = 1 in mixed groups, the share whose first-turn
  advantage is lower under IGPO than under GRPO (the outcome alone).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from igpo.advantage import _group_ids, compute_igpo_advantage, decode_turn_rewards, group_spread
from igpo.answer import extract_answer, f1_score
from igpo.local.engine import LocalEngine, load_config, saved_settings
from igpo.local.train import DEFAULT_CONFIG
from igpo.metrics import IG_NOISE_TOL_NATS
from igpo.turns import turn_index


def decompose(rewards: torch.Tensor, mask: torch.Tensor, uids, f1: list[float]) -> dict:
    """The statistics above for one batch (pure: tensors in, numbers out)."""
    ig_part, _ = compute_igpo_advantage(rewards, mask, uids, reward_mode="ig")
    out_part, _ = compute_igpo_advantage(rewards, mask, uids, reward_mode="f1")
    run_id, n_turns = turn_index(mask)
    turns = decode_turn_rewards(rewards, mask)
    group, n_groups = _group_ids(uids, rewards.shape[0])
    mixed = (group_spread(turns.rewards, turns.is_outcome, group, n_groups) > 1e-9)[group]
    flat = group_spread(turns.rewards, turns.is_ig, group, n_groups) < IG_NOISE_TOL_NATS
    tok = mask.bool() & mixed.unsqueeze(1)
    by_searches: dict[int, list[float]] = defaultdict(list)
    pushed = []
    for b in range(rewards.shape[0]):
        first = run_id[b] == 0
        if not bool(first.any()):
            continue
        ig0 = float(ig_part[b][first][0])
        by_searches[int(n_turns[b]) - 1].append(ig0)
        if bool(mixed[b]) and f1[b] >= 1.0:
            pushed.append(ig0 < 0)  # IGPO's first-turn advantage = out0 + ig0 < out0 = GRPO's
    big_ig = torch.zeros(n_groups, dtype=torch.bool).index_put_(
        (group,), (ig_part.abs() >= 0.5).any(dim=1), accumulate=True
    )
    return {
        "ig_abs": ig_part[tok].abs().tolist(),
        "out_abs": out_part[tok].abs().tolist(),
        "noise_groups": int((flat & big_ig).sum()),
        "groups": n_groups,
        "by_searches": {k: v for k, v in by_searches.items()},
        "pushed": pushed,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    saved = saved_settings(args.run_dir)
    if saved is None or not (args.run_dir / "policy_warm" / "config.json").exists():
        ap.error(
            f"{args.run_dir}: no config.json and policy_warm/ (give an experiment folder of the main job)"
        )
    skip = (
        "out_root",
        "experiment",
        "project",
        "handler_url",
        "resume",
        "progress",
        "tensorboard",
        "answer_template",
    )
    keep = {k: v for k, v in saved.items() if k not in skip}
    over = [f"{k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in keep.items() if v is not None]
    tmp = Path(tempfile.mkdtemp(prefix="igpo-analyze-"))  # the run folder itself is left untouched
    cfg = load_config(
        DEFAULT_CONFIG, [*over, f"out_root={tmp}", "resume=false", "progress=false", "tensorboard=false"]
    )
    shutil.copytree(args.run_dir / "data", cfg.out_dir / "data")
    shutil.copytree(args.run_dir / "policy_warm", cfg.out_dir / "policy_warm")
    engine = LocalEngine(cfg, log=lambda *a: print(*a, file=sys.stderr))
    acc: dict = {"ig_abs": [], "out_abs": [], "noise_groups": 0, "groups": 0, "pushed": []}
    by_s: dict[int, list[float]] = defaultdict(list)
    try:
        engine.prepare_task()
        engine.start_handler()
        engine.build_policy()
        for step in range(args.batches):
            b = engine.collect(step)
            qs = [q for q in engine.batch_questions(step) for _ in range(cfg.group_size)]
            f1 = [
                f1_score(extract_answer(ep.response_text), q.answer)
                for ep, q in zip(b.episodes, qs, strict=True)
            ]
            d = decompose(b.rewards, b.mask, b.uids, f1)
            for k in ("ig_abs", "out_abs", "pushed"):
                acc[k] += d[k]
            acc["noise_groups"] += d["noise_groups"]
            acc["groups"] += d["groups"]
            for k, v in d["by_searches"].items():
                by_s[k] += v
    finally:
        engine.close()
        shutil.rmtree(tmp, ignore_errors=True)
    report = {
        "run_dir": str(args.run_dir),
        "batches": args.batches,
        "scale": {
            "ig_part_abs_mean": float(np.mean(acc["ig_abs"])) if acc["ig_abs"] else None,
            "outcome_part_abs_mean": float(np.mean(acc["out_abs"])) if acc["out_abs"] else None,
        },
        "noise": {"groups": acc["groups"], "near_tie_groups_with_unit_ig": acc["noise_groups"]},
        "first_turn_ig_part_by_searches": {
            str(k): {"n": len(v), "mean": float(np.mean(v))} for k, v in sorted(by_s.items())
        },
        "right_rollouts_pushed_down": {
            "n": len(acc["pushed"]),
            "share": float(np.mean(acc["pushed"])) if acc["pushed"] else None,
        },
    }
    print(json.dumps(report, indent=None if args.json else 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
