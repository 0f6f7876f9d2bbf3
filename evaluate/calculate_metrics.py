#!/usr/bin/env python
"""Score a rollout file per data source: F1, EM, cover-EM (percent), turns and tool calls; print a table.

Usage::

    python evaluate/calculate_metrics.py outputs/PROJECT/EXPERIMENT/rollout/rollout_step_10.json
    python evaluate/calculate_metrics.py outputs/PROJECT/EXPERIMENT/rollout      # latest step there
    python evaluate/calculate_metrics.py EXPERIMENT    # outputs/*/EXPERIMENT/rollout, latest step
                                                       # (else evaluate/EXPERIMENT_result.json)

Scores of ``outputs/PROJECT/EXPERIMENT/rollout/rollout_step_K.json`` go to
``outputs/PROJECT/EXPERIMENT/score_step_K.json`` (as ``evaluate.sh`` names them); of any other
``NAME.json`` (or ``NAME_result.json``) to ``NAME_score.json`` beside it; ``--out`` overrides.
    python evaluate/calculate_metrics.py ROLLOUT.json --judge --judge-url http://localhost:8000/v1 \\
        --judge-model qwen-plus                        # adds LLM-as-judge accuracy

The score JSON maps each ``data_source`` to ``{"f1", "em", "cover_em", "n", "turns", "tool_calls",
"format_ok"}`` (scores in percent, 0-100; ``turns``/``tool_calls`` are means), plus ``"overall"``
(micro: every sample counts once) and ``"average"`` (macro: the mean over data sources, as the paper's
Avg. column). With ``--judge`` each entry also has ``"judge_acc"`` and ``"judge_unparsed"``.

Judge settings: ``--judge-url`` (or env ``JUDGE_BASE_URL``), ``--judge-model`` (or ``JUDGE_MODEL``); the
API key is read from ``JUDGE_API_KEY`` or ``OPENAI_API_KEY`` and never printed. Verdicts are cached in
``judge_cache.sqlite`` beside the rollout file (``--judge-cache`` to move it).

Scoring: the prediction is the content of the last ``<answer>…</answer>`` of the response; a response
without one scores 0. F1/EM use SQuAD normalization (lowercase, no punctuation, no articles a/an/the)
with token-multiset F1, maximized over gold aliases (``igpo.answer``) - the FlashRAG/Search-R1
convention, not DeepResearcher's set-based F1 without article removal. cover-EM: a normalized gold
alias occurs, on word boundaries, in the normalized prediction. ``format_ok`` is the share of responses
that pass the full turn-grammar check (``igpo.answer.check_format``); ``--strict-format`` scores
responses that fail it 0, as the training reward does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # run as a script: make `igpo` and `evaluate` importable from the checkout
    sys.path.insert(0, str(_ROOT))

from evaluate.judge import JudgeError, LLMJudge  # noqa: E402
from igpo.answer import check_format, cover_exact_match, exact_match, extract_answer, f1_score  # noqa: E402
from igpo.rollout_io import RolloutError, latest_rollout, read_rollouts, score_path  # noqa: E402

EVALUATE_DIR = Path(__file__).resolve().parent

#: The paper's IGPO row (Qwen2.5-7B-Instruct, F1 x 100, Table 1) by our canonical data_source names.
PAPER_IGPO_F1: dict[str, float] = {
    "nq": 46.4,
    "triviaqa": 80.6,
    "hotpotqa": 59.0,
    "2wikimultihopqa": 72.1,
    "musique": 32.7,
    "bamboogle": 77.0,
    "popqa": 53.8,
}
PAPER_IGPO_AVG_F1 = 60.2
_PAPER_ALIASES = {
    "tq": "triviaqa",
    "trivia_qa": "triviaqa",
    "hotpot_qa": "hotpotqa",
    "2wiki": "2wikimultihopqa",
    "2wikimqa": "2wikimultihopqa",
    "natural_questions": "nq",
    "pop_qa": "popqa",
}


def paper_source(name: str) -> str | None:
    """Our canonical name of a data source if it is one of the paper's seven, else None."""
    key = name.strip().lower()
    key = _PAPER_ALIASES.get(key, key)
    return key if key in PAPER_IGPO_F1 else None


def score_record(rec: Mapping[str, Any], strict_format: bool = False) -> dict[str, Any]:
    """Per-sample scores in [0, 1] plus the prediction used and whether the format check passed."""
    response = rec.get("response")
    if isinstance(response, str):
        prediction = extract_answer(response)
        format_ok = check_format(response)[0]
    else:  # files with only a prediction: trust it
        prediction = rec.get("prediction")
        format_ok = None
    if strict_format and format_ok is False:
        prediction = None
    golds = rec["ground_truth"]
    return {
        "prediction": prediction,
        "f1": f1_score(prediction, golds),
        "em": exact_match(prediction, golds),
        "cover_em": cover_exact_match(prediction, golds),
        "format_ok": format_ok,
    }


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _pct(x: float | None) -> float | None:
    return None if x is None else round(100.0 * x, 4)


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def _aggregate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "f1": _pct(_mean([r["f1"] for r in rows])),
        "em": _pct(_mean([r["em"] for r in rows])),
        "cover_em": _pct(_mean([r["cover_em"] for r in rows])),
        "n": len(rows),
        "turns": _round(_mean([r["turns"] for r in rows])),
        "tool_calls": _round(_mean([r["tool_calls"] for r in rows])),
        "format_ok": _pct(_mean([None if r["format_ok"] is None else float(r["format_ok"]) for r in rows])),
    }
    if any("judge" in r for r in rows):
        out["judge_acc"] = _pct(_mean([float(r["judge"]) for r in rows]))
        out["judge_unparsed"] = sum(not r["judge_parsed"] for r in rows)
    return out


def _source_order(sources: Sequence[str]) -> list[str]:
    paper = list(PAPER_IGPO_F1)
    return sorted(sources, key=lambda s: (paper.index(paper_source(s)) if paper_source(s) else len(paper), s))


def compute_scores(
    records: Sequence[Mapping[str, Any]],
    strict_format: bool = False,
    judge_verdicts: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """Score JSON: per data source, then ``overall`` (micro) and ``average`` (macro over sources)."""
    if not records:
        raise RolloutError("no records to score")
    rows: list[dict[str, Any]] = []
    for i, rec in enumerate(records):
        row = score_record(rec, strict_format)
        row["data_source"] = rec["data_source"]
        row["turns"] = rec.get("turns")
        row["tool_calls"] = rec.get("tool_calls")
        if judge_verdicts is not None:
            row["judge"] = judge_verdicts[i].correct
            row["judge_parsed"] = judge_verdicts[i].parsed
        rows.append(row)
    by_source: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_source.setdefault(row["data_source"], []).append(row)
    scores: dict[str, Any] = {s: _aggregate(by_source[s]) for s in _source_order(list(by_source))}
    per = [scores[s] for s in by_source]
    scores["overall"] = _aggregate(rows)
    average: dict[str, Any] = {}
    for key in (
        "f1",
        "em",
        "cover_em",
        "n",
        "turns",
        "tool_calls",
        "format_ok",
        "judge_acc",
        "judge_unparsed",
    ):
        if key in ("n", "judge_unparsed"):
            if key in scores["overall"]:
                average[key] = scores["overall"][key]
        elif key in scores["overall"]:
            average[key] = _round(_mean([p[key] for p in per]))
    average["n_sources"] = len(per)
    scores["average"] = average
    return scores


def _fmt(x: Any, digits: int = 1) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def format_table(scores: Mapping[str, Any]) -> str:
    """Markdown table: one row per data source, then overall and average, the paper's IGPO F1 beside."""
    judged = "judge_acc" in scores.get("overall", {})
    head = ["data_source", "n", "F1", "EM", "cover-EM"] + (["judge"] if judged else [])
    head += ["format ok %", "turns", "tool calls", "paper IGPO F1"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    sources = [k for k in scores if k not in ("overall", "average")]
    all_paper = {paper_source(s) for s in sources} >= set(PAPER_IGPO_F1)
    for name in [*sources, "overall", "average"]:
        s = scores[name]
        if name == "average":
            paper = _fmt(PAPER_IGPO_AVG_F1) if all_paper else "-"
        elif name == "overall":
            paper = "-"
        else:
            ps = paper_source(name)
            paper = _fmt(PAPER_IGPO_F1[ps]) if ps else "-"
        cells = [name, _fmt(s["n"]), _fmt(s["f1"]), _fmt(s["em"]), _fmt(s["cover_em"])]
        cells += [_fmt(s.get("judge_acc"))] if judged else []
        cells += [_fmt(s.get("format_ok")), _fmt(s["turns"], 2), _fmt(s["tool_calls"], 2), paper]
        if name in ("overall", "average"):
            cells[0] = f"**{name}**"
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "Scores in percent. F1/EM: SQuAD normalization, token F1, max over gold aliases. overall = micro "
        "(all samples), average = macro (mean over data sources; the paper's Avg. is over its seven). "
        "Paper IGPO F1: Qwen2.5-7B-Instruct, Table 1."
    )
    return "\n".join(lines)


def experiment_rollouts(name: str, roots: Sequence[Path] | None = None) -> list[Path]:
    """The rollout folders of runs named ``name``: ``outputs/*/{name}/rollout`` under the working folder
    and under the checkout (both engines write there: ``igpo-local`` and the verl project name)."""
    roots = roots if roots is not None else [Path.cwd() / "outputs", _ROOT / "outputs"]
    found: list[Path] = []
    for root in roots:
        for d in sorted(root.glob(f"*/{name}/rollout")):
            if d.is_dir() and d.resolve() not in {f.resolve() for f in found}:
                found.append(d)
    return found


def resolve_paths(target: str, out: str | None) -> tuple[Path, Path]:
    """Rollout path and score path from the CLI argument (file, rollout folder, or experiment name)."""
    p = Path(target)
    if p.is_dir():
        p = latest_rollout(p)
    elif not p.exists():
        if p.suffix or "/" in target:
            raise RolloutError(f"{target}: no such file or folder")
        runs = experiment_rollouts(target)
        if len(runs) > 1:
            raise RolloutError(
                f"several runs are named {target!r}: {', '.join(map(str, runs))}; pass the rollout folder"
            )
        if runs:
            p = latest_rollout(runs[0])
        else:
            legacy = EVALUATE_DIR / f"{target}_result.json"
            if not legacy.is_file():
                raise RolloutError(
                    f"{target}: no such file or folder, no run outputs/*/{target}/rollout, "
                    f"and no {legacy} for an experiment named {target!r}"
                )
            p = legacy
    return p, Path(out) if out else score_path(p)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("target", help="rollout JSON, a rollout folder (latest step), or an experiment name")
    p.add_argument("--out", help="score JSON path (default: score_step_K.json beside the rollout folder)")
    p.add_argument("--strict-format", action="store_true", help="score responses failing the turn grammar 0")
    p.add_argument("--judge", action="store_true", help="add LLM-as-judge accuracy")
    p.add_argument(
        "--judge-url", default=None, help="OpenAI-compatible base URL, e.g. http://localhost:8000/v1"
    )
    p.add_argument("--judge-model", default=None, help="judge model name")
    p.add_argument(
        "--judge-cache", default=None, help="SQLite cache (default: judge_cache.sqlite beside the input)"
    )
    p.add_argument("--judge-workers", type=int, default=4, help="parallel judge requests (default 4)")
    p.add_argument("--judge-retries", type=int, default=3, help="retries per request (default 3)")
    p.add_argument("--judge-timeout", type=float, default=60.0, help="seconds per request (default 60)")
    p.add_argument(
        "--judge-backoff", type=float, default=1.0, help="first retry delay in seconds (default 1)"
    )
    return p


def run(argv: Sequence[str] | None = None) -> tuple[dict[str, Any], Path]:
    """Score the target; write the score JSON; return (scores, score path)."""
    args = _parser().parse_args(argv)
    rollout, out = resolve_paths(args.target, args.out)
    records = read_rollouts(rollout)
    verdicts = None
    if args.judge:
        url = args.judge_url or os.environ.get("JUDGE_BASE_URL")
        model = args.judge_model or os.environ.get("JUDGE_MODEL")
        if not url or not model:
            raise RolloutError(
                "--judge needs --judge-url (or JUDGE_BASE_URL) and --judge-model (or JUDGE_MODEL)"
            )
        cache = Path(args.judge_cache) if args.judge_cache else rollout.parent / "judge_cache.sqlite"
        items = [
            (r.get("question") or "", r["ground_truth"], score_record(r, args.strict_format)["prediction"])
            for r in records
        ]
        with LLMJudge(
            url,
            model,
            cache_path=cache,
            timeout=args.judge_timeout,
            max_retries=args.judge_retries,
            backoff=args.judge_backoff,
        ) as judge:
            verdicts = judge.judge_many(items, workers=args.judge_workers)
    scores = compute_scores(records, args.strict_format, verdicts)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(scores, indent=2) + "\n", encoding="utf-8")
    return scores, out


def main(argv: Sequence[str] | None = None) -> int:
    try:
        scores, out = run(argv)
    except (RolloutError, JudgeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(scores))
    print(f"\nscores written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
