"""Write the embedded default's synthetic multi-hop task (deterministic by seed).

Usage: python scripts/make_synthetic_task.py --out data/synthetic [--seed 0] [--people 60] [--hops 1,2,3]

Writes corpus.jsonl (the handler's BM25 corpus), train.parquet / test.parquet (verl format) and
task.json; see igpo/local/synthetic.py for the design.
"""

from __future__ import annotations

import argparse
import json

from igpo.local.engine import LocalConfig
from igpo.local.synthetic import make_task, write_task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    d = LocalConfig()  # the embedded default's task unless told otherwise
    ap.add_argument("--seed", type=int, default=d.task_seed)
    ap.add_argument("--people", type=int, default=d.n_people)
    ap.add_argument("--companies", type=int, default=d.n_companies)
    ap.add_argument("--cities", type=int, default=d.n_cities)
    ap.add_argument("--countries", type=int, default=d.n_countries)
    ap.add_argument("--hops", default=",".join(map(str, d.hops)), help="comma-separated subset of 1,2,3")
    ap.add_argument("--test-fraction", type=float, default=d.test_fraction)
    args = ap.parse_args()
    try:
        hops = tuple(int(h) for h in args.hops.split(","))
    except ValueError:
        ap.error(f"--hops must be comma-separated integers, got {args.hops!r}")
    task = make_task(args.seed, args.people, args.companies, args.cities, args.countries, hops)
    paths = write_task(task, args.out, args.test_fraction)
    train, test = task.split(args.test_fraction)
    print(
        json.dumps(
            {
                "passages": len(task.passages),
                "n_train": len(train),
                "n_test": len(test),
                **{k: str(v) for k, v in paths.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
