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

The official release's ``rollout_step_0.json`` (a list of ``{idx, question, message_str}``) is scored
too, given its test parquet: ``--release-parquet data/test.parquet``. ``idx`` is the parquet row,
which gives ``data_source`` and ``reward_model.ground_truth``; the prediction is the last ``<answer>``
in the model's part of ``message_str`` (after the first ``<|im_start|>assistant``); each question must
match its row's. Such files have no turn grammar to check (``format_ok`` is ``-``) and ``turns`` is
unknown; ``tool_calls`` counts ``<tool_call>`` tags.
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
from igpo.answer import (  # noqa: E402
    as_gold_list,
    check_format,
    cover_exact_match,
    exact_match,
    extract_answer,
    f1_score,
)
from igpo.rollout_io import (  # noqa: E402
    RolloutError,
    latest_rollout,
    read_rollouts,
    score_path,
    validate_record,
)

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


# ------------------------------------------------------------------------- the official release's file
_RELEASE_KEYS = {"idx", "question", "message_str"}
_ASSISTANT_MARK = "<|im_start|>assistant"


def is_release_rollout(data: Any) -> bool:
    """True for the official release's ``rollout_step_0.json``: a list of ``{idx, question, message_str}``
    without ``data_source``/``ground_truth`` (those are in the test parquet)."""
    return (
        isinstance(data, list)
        and bool(data)
        and isinstance(data[0], Mapping)
        and _RELEASE_KEYS <= set(data[0])
        and "ground_truth" not in data[0]
    )


def assistant_text(message_str: str, question: str = "") -> str:
    """The model's part of a whole conversation: after the first assistant turn marker (Qwen chat
    template), else after the question, else all of it. The system prompt's own ``<answer>`` example
    must not count as a prediction."""
    at = message_str.find(_ASSISTANT_MARK)
    if at >= 0:
        return message_str[at + len(_ASSISTANT_MARK) :]
    q = question.strip()
    at = message_str.find(q) if q else -1
    return message_str[at + len(q) :] if at >= 0 else message_str


def _squash(text: str) -> str:
    return " ".join(str(text).split()).casefold()


def _parquet_question(row: Mapping[str, Any]) -> str | None:
    """The question of a test-parquet row: ``question``, ``extra_info.question`` or the last user message."""
    if isinstance(row.get("question"), str) and row["question"].strip():
        return row["question"]
    extra = row.get("extra_info")
    if isinstance(extra, Mapping) and isinstance(extra.get("question"), str) and extra["question"].strip():
        return extra["question"]
    prompt = row.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        users = [m.get("content") for m in list(prompt) if isinstance(m, Mapping) and m.get("role") == "user"]
        if users and isinstance(users[-1], str):
            return users[-1]
    return None


def release_records(data: Sequence[Any], rollout: Path, parquet: str | Path) -> list[dict[str, Any]]:
    """Rollout records from the release's ``{idx, question, message_str}`` list and its test parquet.

    ``idx`` is the row number in the parquet, which gives ``data_source`` and
    ``reward_model.ground_truth``; the prediction is the last ``<answer>`` of the model's text. The
    record's question must match the row's (the parquet's may hold it inside the prompt), else the
    parquet is not the one the rollout was made from: ``RolloutError`` naming the idx."""
    import pandas as pd

    parquet = Path(parquet)
    if not parquet.is_file():
        raise RolloutError(f"--release-parquet {parquet}: no such file")
    try:
        table = pd.read_parquet(parquet)
    except Exception as e:  # pyarrow raises its own error types for a file that is not parquet
        raise RolloutError(f"--release-parquet {parquet}: cannot read it as parquet ({e})") from None
    for col in ("data_source", "reward_model"):
        if col not in table.columns:
            raise RolloutError(
                f"--release-parquet {parquet}: no column {col!r}; columns: {list(table.columns)}"
            )
    rows = table.to_dict("records")
    records: list[dict[str, Any]] = []
    mismatched: list[str] = []
    for i, item in enumerate(data):
        where = f"{rollout}, record {i}"
        if not isinstance(item, Mapping) or not _RELEASE_KEYS <= set(item):
            raise RolloutError(f"{where}: expected an object with {sorted(_RELEASE_KEYS)}, got {item!r:.80}")
        idx, question, message = item["idx"], item["question"], item["message_str"]
        if isinstance(idx, bool) or not isinstance(idx, int) or not 0 <= idx < len(rows):
            raise RolloutError(
                f"{where}: field 'idx' must be a row number 0..{len(rows) - 1} of {parquet}, got {idx!r}"
            )
        if not isinstance(question, str) or not isinstance(message, str):
            raise RolloutError(f"{where}: fields 'question' and 'message_str' must be strings")
        row = rows[idx]
        gold = row["reward_model"].get("ground_truth") if isinstance(row["reward_model"], Mapping) else None
        try:
            golds = as_gold_list(gold)
        except ValueError as e:
            raise RolloutError(f"{parquet}, row {idx}: field 'reward_model.ground_truth': {e}") from None
        expected = _parquet_question(row)
        if expected is not None and _squash(question) not in _squash(expected):
            mismatched.append(f"idx {idx}: rollout {question!r:.60}, parquet {expected!r:.60}")
        text = assistant_text(message, question)
        rec = {
            "idx": idx,
            "data_source": row["data_source"],
            "question": question,
            "ground_truth": golds,
            "prediction": extract_answer(text),
            "turns": None,
            "tool_calls": text.count("<tool_call>"),
        }
        records.append(validate_record(rec, where=f"{where} (idx {idx})", strict=False))
    if mismatched:
        raise RolloutError(
            f"{len(mismatched)} question(s) of {rollout} differ from row idx of {parquet} (is it the test "
            f"parquet this rollout was made from?): " + "; ".join(mismatched[:3])
        )
    return records


def load_records(rollout: Path, release_parquet: str | None) -> list[dict[str, Any]]:
    """Records of a rollout file: ours, or the official release's (which needs its test parquet)."""
    data = None
    if rollout.suffix == ".json":
        try:
            data = json.loads(rollout.read_text(encoding="utf-8"))
        except (ValueError, OSError):
            data = None  # read_rollouts reports the error (or reads JSON lines)
    if is_release_rollout(data):
        if not release_parquet:
            raise RolloutError(
                f"{rollout} is the official release's rollout format ({{idx, question, message_str}}): its "
                "data sources and answers are in the test parquet; pass it with --release-parquet PATH"
            )
        return release_records(data, rollout, release_parquet)
    if release_parquet:
        raise RolloutError(
            f"--release-parquet is only for the release's {{idx, question, message_str}} files; {rollout} "
            "is not one"
        )
    return read_rollouts(rollout)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("target", help="rollout JSON, a rollout folder (latest step), or an experiment name")
    p.add_argument("--out", help="score JSON path (default: score_step_K.json beside the rollout folder)")
    p.add_argument("--strict-format", action="store_true", help="score responses failing the turn grammar 0")
    p.add_argument(
        "--release-parquet",
        default=None,
        help="test parquet giving data_source and ground truth (by row = idx) for a rollout file of the "
        "official release ({idx, question, message_str})",
    )
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
    records = load_records(rollout, args.release_parquet)
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
