#!/usr/bin/env python
"""Turn local QA files into verl-format parquet for IGPO training and evaluation.

Reads, auto-detected per row:
  * FlashRAG JSON lines: ``{"id", "question", "golden_answers": [...]}``;
  * Search-R1-style parquet (verl rows whose ``reward_model.ground_truth`` is ``{"target": [...]}``,
    question in a ``question`` column or in the user message after ``Question:``);
  * DeepResearcher-style parquet (gold aliases joined with ``<|answer_split|>``);
  * plain JSON lines / JSON array / CSV / TSV with a question column and one or more answers
    (a list, a JSON list in a string, or a string split with ``--answer-sep``).

Writes one parquet file per split, one row per question:
  ``prompt``      chat messages from :func:`igpo.prompts.build_prompt` (system prompt + question);
  ``data_source`` canonical dataset name (nq, triviaqa, hotpotqa, 2wikimultihopqa, musique, bamboogle,
                  popqa), from the row, the file path, or ``--data-source``;
  ``reward_model`` ``{"style": "rule", "ground_truth": [alias, ...]}``;
  ``extra_info``  ``{"index", "split", "id", "question", "tools_kwargs"}`` where ``tools_kwargs`` is
                  ``{tool: {"create_kwargs": {"question", "ground_truth", "data_source"}}}`` for every
                  offered tool (verl hands ``create_kwargs`` to the tool's ``create``);
  ``agent_name``  the agent loop that runs the row (default ``igpo_search``).

Examples::

    # FlashRAG layout {dataset}/{split}.jsonl: train on NQ+HotpotQA, test on all seven, 512 per test set
    python scripts/prepare_data.py --out-dir data/igpo \\
        --train flashrag/nq/train.jsonl flashrag/hotpotqa/train.jsonl \\
        --test flashrag/*/test.jsonl flashrag/*/dev.jsonl --test-sample 512 --dedup

    # one split, one file
    python scripts/prepare_data.py my_questions.csv --data-source bamboogle --split test --out test.parquet

A row without a question or answers stops the run with an error naming the file, line/row and field,
unless ``--skip-bad`` is given (then bad rows are counted and listed in the report).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
from tqdm import tqdm

from igpo.answer import as_gold_list
from igpo.prompts import TOOL_SCHEMAS, build_prompt

DEFAULT_AGENT_NAME = "igpo_search"

#: The paper's seven datasets, in the order of its Table 1.
CANONICAL_SOURCES: tuple[str, ...] = (
    "nq",
    "triviaqa",
    "hotpotqa",
    "2wikimultihopqa",
    "musique",
    "bamboogle",
    "popqa",
)

_ALIASES: dict[str, tuple[str, ...]] = {
    "nq": ("nq", "naturalquestions", "naturalquestion", "nqopen", "opennq", "nqsearch"),
    "triviaqa": ("triviaqa", "trivia", "tq", "tqa"),
    "hotpotqa": ("hotpotqa", "hotpot"),
    "2wikimultihopqa": ("2wikimultihopqa", "2wiki", "2wikimqa", "2wikimultihop", "twowiki", "wikimultihopqa"),
    "musique": ("musique",),
    "bamboogle": ("bamboogle",),
    "popqa": ("popqa",),
}
_ALIAS_TO_SOURCE = {alias: canon for canon, aliases in _ALIASES.items() for alias in aliases}

QUESTION_FIELDS: tuple[str, ...] = ("question", "query", "problem", "input", "q")
ANSWER_FIELDS: tuple[str, ...] = (
    "golden_answers",
    "answers",
    "answer",
    "gold_answers",
    "golds",
    "possible_answers",
    "ground_truth",
    "target",
    "targets",
)


class DataError(ValueError):
    """Bad input: the message names the file, the line/row and the field."""


def _key(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.lower())


def canonical_source(name: str | None) -> str | None:
    """Map a dataset name as users spell it (``"NQ"``, ``"2wiki"``, ``"trivia_qa"``) to ours, else None."""
    if not name:
        return None
    k = _key(str(name))
    if k in _ALIAS_TO_SOURCE:
        return _ALIAS_TO_SOURCE[k]
    # "triviaqa_dev", "hotpotqa-distractor": accept a known alias followed by a suffix.
    for alias in sorted(_ALIAS_TO_SOURCE, key=len, reverse=True):
        if len(alias) >= 4 and k.startswith(alias):
            return _ALIAS_TO_SOURCE[alias]
    return None


def infer_source(path: Path) -> str | None:
    """Dataset name from a path: file stem first (``nq_test.jsonl``), then parent folders (``nq/test.jsonl``)."""
    candidates = [path.stem, *(p.name for p in path.parents)]
    for cand in candidates:
        for part in [cand, *re.split(r"[_\-.\s]+", cand)]:
            src = canonical_source(part)
            if src:
                return src
    return None


@dataclass
class Example:
    """One question read from an input file, with where it came from (for messages and reports)."""

    question: str
    golds: list[str]
    data_source: str
    file: str
    where: str
    orig_id: str | None = None


@dataclass
class LoadReport:
    """What happened to one split's inputs: counts per file and source, bad rows, drops."""

    files: dict[str, int] = field(default_factory=dict)
    bad_rows: list[str] = field(default_factory=list)
    duplicates_dropped: int = 0
    overlap_dropped: int = 0
    per_source: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "bad_rows": len(self.bad_rows),
            "bad_row_details": self.bad_rows[:50],
            "duplicates_dropped": self.duplicates_dropped,
            "overlap_dropped": self.overlap_dropped,
            "per_source": self.per_source,
            "rows": sum(self.per_source.values()),
        }


# ----------------------------------------------------------------------------------------------- reading


def _progress(total: int | None, desc: str, unit: str, enabled: bool) -> tqdm:
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=unit == "B",
        disable=None if enabled else True,  # None: only on a terminal
        file=sys.stderr,
        leave=False,
    )


def _iter_jsonl(path: Path, progress: bool) -> Iterator[tuple[str, Any]]:
    with path.open("rb") as f, _progress(path.stat().st_size, path.name, "B", progress) as bar:
        for lineno, raw in enumerate(f, start=1):
            bar.update(len(raw))
            line = raw.decode("utf-8", errors="replace").strip()
            if not line:
                continue
            try:
                yield f"line {lineno}", json.loads(line)
            except json.JSONDecodeError as e:
                yield f"line {lineno}", DataError(f"invalid JSON ({e.msg} at column {e.colno})")


def _iter_json(path: Path, progress: bool) -> Iterator[tuple[str, Any]]:
    """A ``.json`` file: a JSON array of objects, or (as FlashRAG names some files) JSON lines."""
    with path.open("r", encoding="utf-8") as f:
        head = f.read(1024).lstrip()
    if not head.startswith("["):
        yield from _iter_jsonl(path, progress)
        return
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    for i, item in enumerate(
        tqdm(items, desc=path.name, unit="row", disable=None if progress else True, leave=False)
    ):
        yield f"item {i}", item


def _iter_csv(path: Path, progress: bool, delimiter: str) -> Iterator[tuple[str, Any]]:
    with (
        path.open("r", encoding="utf-8", newline="") as f,
        _progress(None, path.name, "row", progress) as bar,
    ):
        reader = csv.DictReader(f, delimiter=delimiter)
        if not reader.fieldnames:
            raise DataError(f"{path}: empty file or no header line")
        for rec in reader:
            bar.update(1)
            yield f"line {reader.line_num}", rec


def _iter_parquet(path: Path, progress: bool) -> Iterator[tuple[str, Any]]:
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a broken file
        raise DataError(f"{path}: cannot read as parquet: {e}") from None
    row = 0
    with _progress(pf.metadata.num_rows, path.name, "row", progress) as bar:
        for batch in pf.iter_batches(batch_size=4096):
            for rec in batch.to_pylist():
                yield f"row {row}", rec
                row += 1
            bar.update(batch.num_rows)


def iter_raw_records(path: Path, progress: bool = False) -> Iterator[tuple[str, Any]]:
    """Yield ``(where, record)`` for each row of a supported file; ``record`` may be a ``DataError``."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        yield from _iter_jsonl(path, progress)
    elif suffix == ".json":
        yield from _iter_json(path, progress)
    elif suffix == ".csv":
        yield from _iter_csv(path, progress, ",")
    elif suffix == ".tsv":
        yield from _iter_csv(path, progress, "\t")
    elif suffix in (".parquet", ".pq"):
        yield from _iter_parquet(path, progress)
    else:
        raise DataError(
            f"{path}: unsupported file type {suffix!r}; use .jsonl, .json, .csv, .tsv or .parquet"
        )


def _present(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, str):
        return bool(value.strip())
    if isinstance(value, float) and value != value:  # NaN from CSV/pandas
        return False
    if hasattr(value, "__len__"):
        return len(value) > 0
    return True


def _missing(rec: Mapping[str, Any], fields: Sequence[str], fallback: str, explicit: str | None) -> str:
    """Say which of the looked-for fields is empty, or that none is there."""
    empty = [f for f in fields if f in rec]
    if empty:
        return f"field {empty[0]!r} is empty"
    if explicit:
        return f"no field {explicit!r} (columns: {sorted(rec)})"
    return f"none of the fields {list(fields)} nor {fallback} (columns: {sorted(rec)})"


def _question_from_prompt(prompt: Any) -> str | None:
    """The question inside a chat prompt: the last user message, after ``Question:`` when present."""
    if not isinstance(prompt, Sequence) or isinstance(prompt, str):
        return None
    users = [m.get("content") for m in prompt if isinstance(m, Mapping) and m.get("role") == "user"]
    if not users or not isinstance(users[-1], str):
        return None
    _, marker, tail = users[-1].rpartition("Question:")
    return (tail if marker else users[-1]).strip() or None


def _parse_golds(value: Any, answer_sep: str | None) -> list[str]:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("[") and text.endswith("]"):
            try:
                value = json.loads(text)  # PopQA's possible_answers, lists written into CSV cells
            except json.JSONDecodeError:
                pass
        elif answer_sep:
            value = text.split(answer_sep)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    return as_gold_list(value)


def parse_record(
    rec: Any,
    *,
    question_field: str | None = None,
    answer_field: str | None = None,
    answer_sep: str | None = None,
) -> tuple[str, list[str], str | None, str | None]:
    """``(question, gold aliases, data_source in the row or None, id or None)`` of one raw record.

    Raises ``DataError`` naming the missing or bad field.
    """
    if not isinstance(rec, Mapping):
        raise DataError(f"expected an object with a question and answers, got {type(rec).__name__}")
    extra = rec.get("extra_info") if isinstance(rec.get("extra_info"), Mapping) else {}

    # Question: an explicit column, a known column, extra_info.question, or the prompt's user message.
    fields = (question_field,) if question_field else QUESTION_FIELDS
    question = next((rec[f] for f in fields if f in rec and _present(rec[f])), None)
    if question is None and not question_field:
        if _present(extra.get("question")):
            question = extra["question"]
        elif "prompt" in rec:
            question = _question_from_prompt(rec["prompt"])
    if question is None:
        raise DataError("no question: " + _missing(rec, fields, "a user message in 'prompt'", question_field))
    if not isinstance(question, str):
        raise DataError(f"field 'question' must be a string, got {type(question).__name__} {question!r}")

    # Answers: an explicit column, a known column, or reward_model.ground_truth (verl rows).
    fields = (answer_field,) if answer_field else ANSWER_FIELDS
    name = next((f for f in fields if f in rec and _present(rec[f])), None)
    if name is not None:
        raw = rec[name]
    elif (
        not answer_field
        and isinstance(rec.get("reward_model"), Mapping)
        and _present(rec["reward_model"].get("ground_truth"))
    ):
        name, raw = "reward_model.ground_truth", rec["reward_model"]["ground_truth"]
    else:
        raise DataError("no answers: " + _missing(rec, fields, "reward_model.ground_truth", answer_field))
    try:
        golds = _parse_golds(raw, answer_sep)
    except ValueError as e:
        raise DataError(f"field {name!r}: {e}") from None

    source = rec.get("data_source") if isinstance(rec.get("data_source"), str) else None
    rid = rec.get("id", extra.get("id"))
    return question.strip(), golds, source, (None if rid is None else str(rid))


def load_examples(
    paths: Iterable[str | Path],
    *,
    data_source: str | None = None,
    skip_bad: bool = False,
    question_field: str | None = None,
    answer_field: str | None = None,
    answer_sep: str | None = None,
    progress: bool = True,
    report: LoadReport | None = None,
) -> list[Example]:
    """Read all rows of ``paths``; a bad row raises ``DataError`` unless ``skip_bad`` (then it is counted).

    The data source is ``data_source`` if given, else the row's own ``data_source`` (canonicalized when
    it is one of the seven), else the one named by the file path; a file with none of these is an error.
    """
    report = report if report is not None else LoadReport()
    override = None
    if data_source:
        override = canonical_source(data_source) or data_source
    examples: list[Example] = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise DataError(f"{path}: no such file")
        path_source = infer_source(path)
        n_before = len(examples)
        for where, rec in iter_raw_records(path, progress):
            try:
                if isinstance(rec, Exception):
                    raise rec
                question, golds, row_source, rid = parse_record(
                    rec, question_field=question_field, answer_field=answer_field, answer_sep=answer_sep
                )
            except DataError as e:
                msg = f"{path}, {where}: {e}"
                if not skip_bad:
                    raise DataError(msg + " (pass --skip-bad to skip such rows)") from None
                report.bad_rows.append(msg)
                continue
            source = override or canonical_source(row_source) or row_source or path_source
            if not source:
                raise DataError(
                    f"{path}: cannot tell the dataset from the file name or a data_source column; "
                    f"pass --data-source (one of {list(CANONICAL_SOURCES)} or your own name)"
                )
            examples.append(Example(question, golds, source, str(path), where, rid))
        report.files[str(path)] = len(examples) - n_before
    return examples


# ------------------------------------------------------------------------------------------- processing


def question_key(question: str) -> str:
    """Key for de-duplication and overlap: lowercase, punctuation dropped, whitespace collapsed."""
    return " ".join(re.sub(r"[^\w\s]", " ", question.lower()).split())


def dedup_examples(examples: list[Example]) -> tuple[list[Example], int]:
    """Drop repeated questions within a data source (first one kept); returns (kept, number dropped)."""
    seen: set[tuple[str, str]] = set()
    kept = []
    for ex in examples:
        k = (ex.data_source, question_key(ex.question))
        if k not in seen:
            seen.add(k)
            kept.append(ex)
    return kept, len(examples) - len(kept)


def parse_sample_spec(spec: str | None) -> tuple[int | None, dict[str, int]]:
    """``"512"`` -> (512, {}); ``"nq=100,hotpotqa=200"`` -> (None, {...}); ``"300,nq=100"`` mixes both."""
    if spec is None or not str(spec).strip():
        return None, {}
    default: int | None = None
    per: dict[str, int] = {}
    for part in str(spec).split(","):
        part = part.strip()
        try:
            if "=" in part:
                name, n = part.split("=", 1)
                per[canonical_source(name.strip()) or name.strip()] = int(n)
            else:
                default = int(part)
        except ValueError:
            raise DataError(f"--sample: cannot read {part!r}; use N or source=N[,source=N...]") from None
    if (default is not None and default < 0) or any(v < 0 for v in per.values()):
        raise DataError(f"--sample: sizes must be >= 0, got {spec!r}")
    return default, per


def sample_per_source(examples: list[Example], spec: str | None, seed: int) -> list[Example]:
    """Keep at most N random rows per data source (seeded; file order kept among the chosen)."""
    default, per = parse_sample_spec(spec)
    if default is None and not per:
        return examples
    by_source: dict[str, list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        by_source[ex.data_source].append(i)
    keep: set[int] = set()
    for source in sorted(by_source):
        idx = by_source[source]
        n = per.get(source, default)
        if n is None or n >= len(idx):
            keep.update(idx)
        else:
            keep.update(random.Random(f"{seed}:{source}").sample(idx, n))
    return [ex for i, ex in enumerate(examples) if i in keep]


def overlap_report(train: list[Example], test: list[Example]) -> dict[str, Any]:
    """How many test questions (per test source) also occur, normalized, among the train questions."""
    train_keys = {question_key(ex.question) for ex in train}
    per: dict[str, dict[str, int]] = {}
    for ex in test:
        entry = per.setdefault(ex.data_source, {"test": 0, "in_train": 0})
        entry["test"] += 1
        entry["in_train"] += question_key(ex.question) in train_keys
    total = sum(e["in_train"] for e in per.values())
    return {"test_rows": len(test), "test_rows_in_train": total, "per_source": per}


def to_verl_rows(
    examples: list[Example],
    split: str,
    *,
    tools: Sequence[str] = ("search",),
    today: str | date | None = None,
    agent_name: str = DEFAULT_AGENT_NAME,
) -> list[dict[str, Any]]:
    """verl dataset rows (see the module docstring for the columns)."""
    today_str = (today.isoformat() if isinstance(today, date) else today) or date.today().isoformat()
    rows = []
    for index, ex in enumerate(examples):
        create_kwargs = {
            "question": ex.question,
            "ground_truth": list(ex.golds),
            "data_source": ex.data_source,
        }
        rows.append(
            {
                "data_source": ex.data_source,
                "prompt": build_prompt(ex.question, tools=list(tools), today=today_str),
                "ability": "fact-reasoning",
                "reward_model": {"style": "rule", "ground_truth": list(ex.golds)},
                "extra_info": {
                    "index": index,
                    "split": split,
                    "id": ex.orig_id if ex.orig_id is not None else f"{ex.data_source}-{split}-{index}",
                    "question": ex.question,
                    "tools_kwargs": {t: {"create_kwargs": dict(create_kwargs)} for t in tools},
                },
                "agent_name": agent_name,
            }
        )
    return rows


def write_parquet(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Write rows with pyarrow (nested columns kept as lists/structs); creates the folder."""
    path = Path(path)
    if not rows:
        raise DataError(f"{path}: nothing to write (no rows left after reading, sampling and filtering)")
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path, index=False, engine="pyarrow")
    return path


def prepare_split(
    paths: Sequence[str | Path],
    split: str,
    *,
    sample: str | None = None,
    seed: int = 0,
    dedup: bool = False,
    exclude: list[Example] | None = None,
    **load_kwargs: Any,
) -> tuple[list[Example], LoadReport]:
    """Read, de-duplicate, drop questions found in ``exclude`` (overlap), and sample one split."""
    report = LoadReport()
    examples = load_examples(paths, report=report, **load_kwargs)
    if dedup:
        examples, report.duplicates_dropped = dedup_examples(examples)
    if exclude:
        keys = {question_key(ex.question) for ex in exclude}
        kept = [ex for ex in examples if question_key(ex.question) not in keys]
        report.overlap_dropped = len(examples) - len(kept)
        examples = kept
    examples = sample_per_source(examples, sample, seed)
    report.per_source = dict(sorted(Counter(ex.data_source for ex in examples).items()))
    return examples, report


# ---------------------------------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Formats, columns and examples: see the top of scripts/prepare_data.py.",
    )
    p.add_argument("inputs", nargs="*", help="input files for one split (with --split and --out)")
    p.add_argument("--split", default="train", help="split name of the positional inputs (default: train)")
    p.add_argument("--out", help="output parquet for the positional inputs")
    p.add_argument("--train", nargs="+", default=[], metavar="FILE", help="train files (with --out-dir)")
    p.add_argument("--test", nargs="+", default=[], metavar="FILE", help="test files (with --out-dir)")
    p.add_argument("--out-dir", help="folder for train.parquet, test.parquet and prepare_report.json")
    p.add_argument("--data-source", help="data_source for every row (else from the row or file name)")
    p.add_argument("--sample", help="rows per data source: N or source=N,... (seeded); default all")
    p.add_argument("--train-sample", help="like --sample, for --train only")
    p.add_argument("--test-sample", help="like --sample, for --test only")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling (default 0)")
    p.add_argument("--dedup", action="store_true", help="drop repeated questions within a data source")
    p.add_argument(
        "--overlap-with",
        nargs="+",
        default=[],
        metavar="FILE",
        help="report overlap of the output with these",
    )
    p.add_argument(
        "--drop-overlap",
        action="store_true",
        help="drop train questions that occur in the test/overlap files",
    )
    p.add_argument("--skip-bad", action="store_true", help="skip rows without question/answers (counted)")
    p.add_argument(
        "--tools",
        nargs="+",
        default=["search"],
        choices=sorted(TOOL_SCHEMAS),
        help="tools offered (default: search)",
    )
    p.add_argument("--today", help="date written into the system prompt (default: today, ISO)")
    p.add_argument(
        "--agent-name", default=DEFAULT_AGENT_NAME, help=f"agent_name column (default {DEFAULT_AGENT_NAME})"
    )
    p.add_argument("--question-field", help="column holding the question (default: auto)")
    p.add_argument("--answer-field", help="column holding the answer(s) (default: auto)")
    p.add_argument("--answer-sep", help="separator of several answers in one string cell, e.g. '|'")
    p.add_argument("--report", help="also write the JSON report here")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the CLI and return the report (also printed as JSON on stdout)."""
    args = _parser().parse_args(argv)
    load_kwargs: dict[str, Any] = {
        "data_source": args.data_source,
        "skip_bad": args.skip_bad,
        "question_field": args.question_field,
        "answer_field": args.answer_field,
        "answer_sep": args.answer_sep,
        "progress": not args.no_progress,
    }
    today = args.today or date.today().isoformat()
    row_kwargs = {"tools": args.tools, "today": today, "agent_name": args.agent_name}
    report: dict[str, Any] = {"today": today, "tools": args.tools, "outputs": {}}

    if args.inputs:
        if args.train or args.test or args.out_dir:
            raise DataError(
                "give either positional inputs with --out, or --train/--test with --out-dir, not both"
            )
        if not args.out:
            raise DataError("positional inputs need --out OUT.parquet")
        others = load_examples(args.overlap_with, **load_kwargs) if args.overlap_with else []
        exclude = others if (args.drop_overlap and args.split == "train") else None
        examples, rep = prepare_split(
            args.inputs,
            args.split,
            sample=args.sample,
            seed=args.seed,
            dedup=args.dedup,
            exclude=exclude,
            **load_kwargs,
        )
        out = write_parquet(to_verl_rows(examples, args.split, **row_kwargs), args.out)
        report["outputs"][args.split] = {"path": str(out), **rep.as_dict()}
        if others:
            train_side, test_side = (examples, others) if args.split == "train" else (others, examples)
            report["overlap"] = overlap_report(train_side, test_side)
    else:
        if not (args.train or args.test):
            raise DataError(
                "nothing to do: give input files (with --split/--out) or --train/--test (with --out-dir)"
            )
        if not args.out_dir:
            raise DataError("--train/--test need --out-dir DIR")
        out_dir = Path(args.out_dir)
        test, test_rep = (
            prepare_split(
                args.test,
                "test",
                sample=args.test_sample or args.sample,
                seed=args.seed,
                dedup=args.dedup,
                **load_kwargs,
            )
            if args.test
            else ([], None)
        )
        train, train_rep = (
            prepare_split(
                args.train,
                "train",
                sample=args.train_sample or args.sample,
                seed=args.seed,
                dedup=args.dedup,
                exclude=test if args.drop_overlap else None,
                **load_kwargs,
            )
            if args.train
            else ([], None)
        )
        for split, examples, rep in (("train", train, train_rep), ("test", test, test_rep)):
            if rep is not None:
                out = write_parquet(to_verl_rows(examples, split, **row_kwargs), out_dir / f"{split}.parquet")
                report["outputs"][split] = {"path": str(out), **rep.as_dict()}
        if train and test:
            report["overlap"] = overlap_report(train, test)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "prepare_report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")

    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def _summary(report: dict[str, Any]) -> str:
    lines = []
    for split, info in report["outputs"].items():
        lines.append(f"{split}: {info['rows']} rows -> {info['path']}  per source: {info['per_source']}")
        if info["bad_rows"]:
            lines.append(f"  skipped {info['bad_rows']} bad row(s), e.g. {info['bad_row_details'][0]}")
        if info["duplicates_dropped"]:
            lines.append(f"  dropped {info['duplicates_dropped']} duplicate question(s)")
        if info["overlap_dropped"]:
            lines.append(f"  dropped {info['overlap_dropped']} question(s) that occur in the test set")
    if "overlap" in report:
        ov = report["overlap"]
        lines.append(
            f"overlap: {ov['test_rows_in_train']} of {ov['test_rows']} test question(s) also in train"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        report = run(argv)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(_summary(report), file=sys.stderr)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
