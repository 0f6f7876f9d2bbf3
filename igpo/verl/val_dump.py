"""Turn verl's validation dump into our rollout JSON: ``python -m igpo.verl.val_dump DUMP.jsonl --val-files
VAL.parquet --out-dir DIR``.

verl's trainer (``trainer.validation_data_dir``) writes ``{step}.jsonl`` with one line per sample:
``input`` (the decoded prompt), ``output`` (the decoded multi-turn response), ``gts``, ``score``,
``step`` and the reward's extra fields. It keeps no data source, so the question of each sample is
found in the validation parquet (the user message of its ``prompt``) to recover ``data_source`` and
the gold aliases. Turns and tool calls are counted from the response's tags.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from igpo.rollout_io import make_record, rollout_dir, write_rollouts

_THINK = re.compile(r"<think>")
_CALL = re.compile(r"<tool_call>")


def question_index(val_files: list[str | Path]) -> dict[str, tuple[str, Any]]:
    """``question -> (data_source, ground_truth)`` from verl-format parquet files."""
    import pandas as pd

    index: dict[str, tuple[str, Any]] = {}
    for path in val_files:
        df = pd.read_parquet(path)
        for i, row in df.iterrows():
            users = [m["content"] for m in row["prompt"] if m["role"] == "user"]
            if not users:
                raise ValueError(f"{path} row {i}: prompt has no user message")
            index[users[-1]] = (str(row["data_source"]), row["reward_model"]["ground_truth"])
    return index


def find_question(prompt_text: str, index: dict[str, tuple[str, Any]]) -> str | None:
    """The indexed question that the decoded prompt ends with (the last user message), if any."""
    best = None
    for q in index:
        if q in prompt_text and (best is None or len(q) > len(best)):
            best = q
    return best


def convert(dump_path: str | Path, index: dict[str, tuple[str, Any]]) -> list[dict[str, Any]]:
    """Rollout records (``igpo.rollout_io``) for every line of a verl validation dump."""
    records = []
    for n, line in enumerate(Path(dump_path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{dump_path}:{n}: not JSON ({e.msg})") from None
        for key in ("input", "output"):
            if not isinstance(row.get(key), str):
                raise ValueError(f"{dump_path}:{n}: field {key!r} must be a string, got {row.get(key)!r:.60}")
        q = find_question(row["input"], index)
        if q is None:
            raise ValueError(f"{dump_path}:{n}: its prompt matches no question of the validation files")
        source, gold = index[q]
        response = row["output"]
        records.append(
            make_record(
                data_source=source,
                question=q,
                ground_truth=gold,
                response=response,
                turns=len(_THINK.findall(response)),
                tool_calls=len(_CALL.findall(response)),
                score=row.get("score"),
                step=row.get("step"),
            )
        )
    return records


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dump", help="verl validation dump, {step}.jsonl")
    ap.add_argument("--val-files", nargs="+", required=True, help="the validation parquet file(s)")
    ap.add_argument("--out-dir", default=None, help="default: outputs/{project}/{experiment}/rollout")
    ap.add_argument("--project", default="igpo")
    ap.add_argument("--experiment", default="eval")
    args = ap.parse_args(argv)
    try:
        records = convert(args.dump, question_index(args.val_files))
    except (OSError, ValueError, KeyError) as e:
        print(f"igpo.verl.val_dump: {e}", file=sys.stderr)
        return 2
    step = int(records[0].get("step") or 0) if records else 0
    out = Path(args.out_dir) if args.out_dir else rollout_dir(args.project, args.experiment)
    print(write_rollouts(records, out, step))
    return 0


if __name__ == "__main__":
    sys.exit(main())
