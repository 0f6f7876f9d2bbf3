"""Rollout records: the one JSON format both engines (verl and the local CPU engine) write for evaluation.

A rollout file is ``outputs/{project}/{experiment}/rollout/rollout_step_{k}.json`` holding a JSON list
with one record per sample::

    {"data_source": "nq", "question": "...", "ground_truth": ["alias", ...],
     "response": "<think>…</think><tool_call>…</tool_call><tool_response>…</tool_response>…<answer>…</answer>",
     "prediction": "extracted answer" | null, "turns": 3, "tool_calls": 2}

``response`` is the full model response (all turns, tool responses included); ``prediction`` is the
content of its last ``<answer>`` tag; ``turns`` counts model turns and ``tool_calls`` the tool calls made.
Extra keys (reward, uid, …) are kept. Build records with :func:`make_record` and write them with
:func:`write_rollouts`, so the two engines produce identical files. Depends on ``igpo.answer`` only.
"""

from __future__ import annotations

import json
import numbers
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from igpo.answer import as_gold_list, extract_answer

__all__ = [
    "REQUIRED_FIELDS",
    "RolloutError",
    "latest_rollout",
    "make_record",
    "read_rollouts",
    "rollout_dir",
    "rollout_path",
    "validate_record",
    "write_rollouts",
]

REQUIRED_FIELDS: tuple[str, ...] = (
    "data_source",
    "question",
    "ground_truth",
    "response",
    "prediction",
    "turns",
    "tool_calls",
)
_AUTO = object()
_STEP_RE = re.compile(r"^rollout_step_(\d+)\.json$")


class RolloutError(ValueError):
    """A rollout record or file is malformed; the message names the record and the field."""


def rollout_dir(project: str, experiment: str, root: str | Path = "outputs") -> Path:
    """``{root}/{project}/{experiment}/rollout``: where a run's rollout files go."""
    for name, value in (("project", project), ("experiment", experiment)):
        if not isinstance(value, str) or not value.strip() or "/" in value or value in (".", ".."):
            raise RolloutError(f"{name} must be a plain non-empty name, got {value!r}")
    return Path(root) / project / experiment / "rollout"


def rollout_path(out_dir: str | Path, step: int) -> Path:
    """``{out_dir}/rollout_step_{step}.json``."""
    if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
        raise RolloutError(f"step must be an integer >= 0, got {step!r}")
    return Path(out_dir) / f"rollout_step_{int(step)}.json"


def _count(value: Any, name: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise RolloutError(f"{where}: field {name!r} must be an integer >= 0, got {value!r}")
    return int(value)  # numpy integers become plain ints, so the JSON is the same from both engines


def validate_record(record: Mapping[str, Any], where: str = "record", strict: bool = True) -> dict[str, Any]:
    """Check one record and return a normalized copy (gold aliases as a list of strings, plain ints).

    ``strict`` (writing) requires every field of :data:`REQUIRED_FIELDS`. Non-strict (reading files
    that other tools wrote) needs only ``data_source``, ``ground_truth`` and ``response`` or
    ``prediction``; missing ``turns``/``tool_calls`` become None and a missing ``prediction`` is
    extracted from ``response``.
    """
    if not isinstance(record, Mapping):
        raise RolloutError(f"{where}: expected a JSON object, got {type(record).__name__}")
    rec = dict(record)
    if strict:
        missing = [f for f in REQUIRED_FIELDS if f not in rec]
    else:
        missing = [f for f in ("data_source", "ground_truth") if f not in rec]
        if "response" not in rec and "prediction" not in rec:
            missing.append("response")
    if missing:
        raise RolloutError(f"{where}: missing field(s) {missing}; present: {sorted(rec)}")

    if not isinstance(rec["data_source"], str) or not rec["data_source"].strip():
        raise RolloutError(
            f"{where}: field 'data_source' must be a non-empty string, got {rec['data_source']!r}"
        )
    if "question" in rec and not isinstance(rec["question"], str):
        raise RolloutError(
            f"{where}: field 'question' must be a string, got {type(rec['question']).__name__}"
        )
    try:
        rec["ground_truth"] = as_gold_list(rec["ground_truth"])
    except ValueError as e:
        raise RolloutError(f"{where}: field 'ground_truth': {e}") from None
    if "response" in rec and not isinstance(rec["response"], str):
        raise RolloutError(
            f"{where}: field 'response' must be a string, got {type(rec['response']).__name__}"
        )
    if "prediction" not in rec:
        rec["prediction"] = extract_answer(rec["response"])
    elif rec["prediction"] is not None and not isinstance(rec["prediction"], str):
        raise RolloutError(
            f"{where}: field 'prediction' must be a string or null, got {type(rec['prediction']).__name__}"
        )
    for name in ("turns", "tool_calls"):
        if rec.get(name) is None and not strict:
            rec[name] = None
        else:
            rec[name] = _count(rec.get(name), name, where)
    return rec


def make_record(
    *,
    data_source: str,
    question: str,
    ground_truth: Any,
    response: str,
    turns: int,
    tool_calls: int,
    prediction: str | None | object = _AUTO,
    **extra: Any,
) -> dict[str, Any]:
    """One validated rollout record. ``prediction`` defaults to the last ``<answer>`` of ``response``.

    ``ground_truth`` may be any alias container ``igpo.answer.as_gold_list`` accepts; it is stored as a
    list. Extra keyword fields are stored as given (they must be JSON-serializable).
    """
    rec = {
        "data_source": data_source,
        "question": question,
        "ground_truth": ground_truth,
        "response": response,
        "prediction": extract_answer(response) if prediction is _AUTO else prediction,
        "turns": turns,
        "tool_calls": tool_calls,
        **extra,
    }
    return validate_record(rec, where=f"rollout record ({data_source!r}, {question!r:.60})")


def write_rollouts(records: Iterable[Mapping[str, Any]], out_dir: str | Path, step: int) -> Path:
    """Validate ``records`` and write them to ``{out_dir}/rollout_step_{step}.json``; returns the path.

    The file is written to a temporary name and renamed, so a reader never sees half a file.
    """
    path = rollout_path(out_dir, step)
    checked = [validate_record(r, where=f"record {i}") for i, r in enumerate(records)]
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        text = json.dumps(checked, ensure_ascii=False, indent=1)
    except TypeError as e:
        raise RolloutError(f"{path}: a record holds a value JSON cannot store: {e}") from None
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_rollouts(path: str | Path, strict: bool = False) -> list[dict[str, Any]]:
    """Read and validate a rollout file (a JSON list of records; JSON lines are accepted too)."""
    path = Path(path)
    if not path.is_file():
        raise RolloutError(f"{path}: no such file")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if len(lines) > 1 and lines[0].lstrip().startswith("{"):
            data = []
            for lineno, line in enumerate(text.splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    data.append(json.loads(line))
                except json.JSONDecodeError as e2:
                    raise RolloutError(f"{path}, line {lineno}: invalid JSON: {e2.msg}") from None
        else:
            raise RolloutError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    if isinstance(data, Mapping) and isinstance(data.get("records"), list):
        data = data["records"]
    if not isinstance(data, list):
        raise RolloutError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return [validate_record(r, where=f"{path}, record {i}", strict=strict) for i, r in enumerate(data)]


def score_path(rollout: str | Path) -> Path:
    """Where the scores of a rollout file go: the one naming rule of ``evaluate.sh`` and ``calculate_metrics``.

    ``.../{experiment}/rollout/rollout_step_{k}.json`` -> ``.../{experiment}/score_step_{k}.json``;
    ``NAME_result.json`` -> ``NAME_score.json``; any other ``NAME.json`` -> ``NAME_score.json`` beside it.
    """
    rollout = Path(rollout)
    m = _STEP_RE.match(rollout.name)
    if m and rollout.parent.name == "rollout":
        return rollout.parent.parent / f"score_step_{m.group(1)}.json"
    stem = rollout.stem.removesuffix("_result")
    return rollout.with_name(f"{stem}_score.json")


def latest_rollout(directory: str | Path) -> Path:
    """The ``rollout_step_{k}.json`` with the largest ``k`` in ``directory``."""
    directory = Path(directory)
    steps = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _STEP_RE.match(p.name))]
    if not steps:
        raise RolloutError(f"{directory}: no rollout_step_<k>.json files")
    return max(steps)[1]
