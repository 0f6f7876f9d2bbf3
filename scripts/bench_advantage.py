"""Time the IGPO estimator on a large batch (default 512 x 8192, up to 10 turns). Prints JSON.

Usage: python scripts/bench_advantage.py [--batch 512] [--resp-len 8192] [--max-turns 10] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from igpo.advantage import compute_igpo_advantage
from igpo.turns import run_starts_ends


def make_batch(bs: int, length: int, max_turns: int, group: int, seed: int = 0):
    """Random multi-turn masks (up to ``max_turns`` runs per row) with rewards on run ends."""
    g = torch.Generator().manual_seed(seed)
    turns = torch.randint(1, max_turns + 1, (bs,), generator=g)
    mask = torch.zeros(bs, length)
    pos = torch.arange(length)
    for t in range(max_turns):  # vectorized over rows: turn t occupies a slice of each row
        seg = length // max_turns
        start, gen_len = t * seg, int(seg * 0.6)
        on = (turns > t).unsqueeze(1) & (pos >= start) & (pos < start + gen_len)
        mask[on] = 1.0
    _, ends = run_starts_ends(mask)
    rewards = torch.where(ends, torch.randn(bs, length, generator=g), torch.zeros(bs, length))
    index = np.array([f"p{i // group}" for i in range(bs)], dtype=object)
    return rewards, mask, index


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--resp-len", type=int, default=8192)
    ap.add_argument("--max-turns", type=int, default=10)
    ap.add_argument("--group", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", action="store_true", help="accepted for symmetry; output is always JSON")
    args = ap.parse_args()
    rewards, mask, index = make_batch(args.batch, args.resp_len, args.max_turns, args.group)
    compute_igpo_advantage(rewards, mask, index)  # warm-up
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        compute_igpo_advantage(rewards, mask, index)
        times.append((time.perf_counter() - t0) * 1000)
    print(
        json.dumps(
            {
                "batch": args.batch,
                "resp_len": args.resp_len,
                "max_turns": args.max_turns,
                "group": args.group,
                "median_ms": round(float(np.median(times)), 1),
                "min_ms": round(min(times), 1),
                "torch_threads": torch.get_num_threads(),
                "machine": f"{platform.machine()} {platform.processor()}".strip(),
            }
        )
    )


if __name__ == "__main__":
    main()
