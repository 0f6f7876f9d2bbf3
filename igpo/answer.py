"""Answer extraction, normalization, EM/F1 scoring, turn-format checks and the outcome reward (Eq. 2).

Scoring follows the SQuAD convention that FlashRAG and Search-R1 use (lowercase, drop punctuation,
drop the articles a/an/the, collapse whitespace; token-multiset F1), maximized over gold aliases.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Mapping
from typing import Any

ANSWER_SPLIT = "<|answer_split|>"
DEFAULT_FORMAT_PENALTY = -1.0

_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_ARTICLES_RE = re.compile(r"\b(a|an|the)\b")
_PUNCT_TABLE = str.maketrans("", "", string.punctuation)
# The tags of the turn grammar (paper §2.1). <tool_response> is written by the environment.
_TAG_RE = re.compile(r"<(/?)(think|tool_call|answer|tool_response)>")


def extract_answer(response: str) -> str | None:
    """Return the stripped content of the last ``<answer>…</answer>`` in ``response``, or None."""
    if not isinstance(response, str):
        return None
    matches = _ANSWER_RE.findall(response)
    if not matches:
        return None
    return matches[-1].strip()


def normalize_answer(s: str) -> str:
    """SQuAD-style normalization: lowercase, drop punctuation and articles, collapse whitespace."""
    s = str(s).lower().translate(_PUNCT_TABLE)
    s = _ARTICLES_RE.sub(" ", s)
    return " ".join(s.split())


def as_gold_list(golds: Any) -> list[str]:
    """Turn any accepted gold container into a list of alias strings.

    Accepts a string (optionally joined with ``<|answer_split|>``), a list/tuple/numpy array of
    strings, or a mapping with a ``"target"`` entry holding any of these. Raises ``ValueError`` naming
    the value for anything else, and for an empty alias list.
    """
    if isinstance(golds, Mapping):
        if "target" not in golds:
            raise ValueError(f"ground_truth mapping must have a 'target' key, got keys {sorted(golds)!r}")
        return as_gold_list(golds["target"])
    if isinstance(golds, bytes):
        golds = golds.decode("utf-8")
    if isinstance(golds, str):
        aliases = [g.strip() for g in golds.split(ANSWER_SPLIT)]
    elif hasattr(golds, "tolist") and not isinstance(golds, (list, tuple)):
        return as_gold_list(golds.tolist())
    elif isinstance(golds, (list, tuple)):
        aliases = []
        for g in golds:
            if isinstance(g, (list, tuple, Mapping)) or (hasattr(g, "tolist") and not isinstance(g, str)):
                aliases.extend(as_gold_list(g))
            elif g is None:
                continue
            else:
                aliases.append(str(g).strip())
    else:
        raise ValueError(
            f"ground_truth must be a string, a list of strings or {{'target': [...]}}, got {golds!r}"
        )
    aliases = [a for a in aliases if a]
    if not aliases:
        raise ValueError(f"ground_truth has no non-empty answer alias: {golds!r}")
    return aliases


def _token_f1(prediction: str, gold: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    common = Counter(pred_tokens) & Counter(gold_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str | None, golds: Any) -> float:
    """Token-multiset F1 of ``prediction`` against the best-matching gold alias, in [0, 1]."""
    if prediction is None:
        return 0.0
    return max(_token_f1(prediction, g) for g in as_gold_list(golds))


def exact_match(prediction: str | None, golds: Any) -> float:
    """1.0 if the normalized prediction equals a normalized gold alias, else 0.0."""
    if prediction is None:
        return 0.0
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in as_gold_list(golds)))


def cover_exact_match(prediction: str | None, golds: Any) -> float:
    """1.0 if some normalized gold alias occurs, on word boundaries, in the normalized prediction.

    An alias that normalizes to nothing (``"A"``, ``"the"``, ``"?"``) is covered only by a prediction
    that normalizes to nothing too, as in ``exact_match``: cover-EM is never below EM.
    """
    if prediction is None:
        return 0.0
    norm = normalize_answer(prediction)
    pred = f" {norm} "
    for g in as_gold_list(golds):
        gold = normalize_answer(g)
        if (f" {gold} " in pred) if gold else not norm:
            return 1.0
    return 0.0


def _check_tool_call(body: str) -> str | None:
    """Return why a ``<tool_call>`` body is not a JSON object with a name and arguments, else None."""
    try:
        call = json.loads(body)
    except json.JSONDecodeError as e:
        return f"tool_call is not valid JSON ({e.msg} at char {e.pos})"
    if not isinstance(call, dict):
        return f"tool_call must be a JSON object, got {type(call).__name__}"
    if not isinstance(call.get("name"), str) or not call["name"].strip():
        return "tool_call has no string 'name'"
    if "arguments" not in call:
        return "tool_call has no 'arguments'"
    if not isinstance(call["arguments"], dict):
        return f"tool_call 'arguments' must be a JSON object, got {type(call['arguments']).__name__}"
    return None


def check_format(response: str) -> tuple[bool, str]:
    """Check a full multi-turn response against the turn grammar of the paper (§2.1).

    Every model turn is ``<think>…</think>`` followed by either ``<tool_call>{json}</tool_call>``
    (then the environment's ``<tool_response>…</tool_response>``) or, in the last turn,
    ``<answer>…</answer>``. Tags must be balanced and not nested; only whitespace may lie between a
    closing tag and the next opening one. Returns ``(ok, reason)``; the reason says what is wrong.
    """
    if not isinstance(response, str) or not response.strip():
        return False, "empty response"
    pos = 0
    # States: expect 'think' to open a turn; after think, expect tool_call or answer;
    # after tool_call, expect tool_response or a new think (response-less truncation is not an answer);
    # after answer, nothing but whitespace.
    state = "turn_start"
    open_tag: str | None = None
    open_at = 0
    turns = 0
    for m in _TAG_RE.finditer(response):
        closing, tag = m.group(1) == "/", m.group(2)
        if open_tag is not None:
            if not closing or tag != open_tag:
                return (
                    False,
                    f"<{'/' if closing else ''}{tag}> at char {m.start()} inside unclosed <{open_tag}>",
                )
            body = response[open_at : m.start()]
            if tag == "tool_call":
                why = _check_tool_call(body.strip())
                if why:
                    return False, f"turn {turns}: {why}"
            if tag in ("think", "answer") and not body.strip():
                return False, f"turn {turns}: empty <{tag}>"
            open_tag = None
            pos = m.end()
            state = {
                "think": "after_think",
                "tool_call": "after_call",
                "answer": "done",
                "tool_response": "turn_start",
            }[tag]
            continue
        if closing:
            return False, f"</{tag}> at char {m.start()} without a matching <{tag}>"
        between = response[pos : m.start()]
        if between.strip():
            return False, f"text outside tags before <{tag}> at char {m.start()}: {between.strip()[:40]!r}"
        allowed = {
            "turn_start": ("think",),
            "after_think": ("tool_call", "answer"),
            "after_call": ("tool_response",),
            "done": (),
        }[state]
        if tag not in allowed:
            if state == "done":
                return False, f"<{tag}> at char {m.start()} after the final <answer>"
            want = " or ".join(f"<{a}>" for a in allowed)
            return False, f"expected {want} at char {m.start()}, found <{tag}>"
        if tag == "think":
            turns += 1
        open_tag, open_at = tag, m.end()
    if open_tag is not None:
        return False, f"<{open_tag}> opened at char {open_at - len(open_tag) - 2} is never closed"
    if response[pos:].strip():
        return False, f"text outside tags at the end: {response[pos:].strip()[:40]!r}"
    if state != "done":
        return False, "no final <answer>" if turns else "no <think> turn"
    return True, "ok"


def outcome_reward(response: str, golds: Any, format_penalty: float = DEFAULT_FORMAT_PENALTY) -> float:
    """Eq. 2: word-level F1 of the extracted answer if the response is well-formed, else the penalty.

    ``format_penalty`` is the paper's λ_fmt and must be negative.
    """
    if format_penalty >= 0:
        raise ValueError(
            f"format_penalty must be negative (the paper's lambda_fmt < 0), got {format_penalty}"
        )
    ok, _ = check_format(response)
    if not ok:
        return float(format_penalty)
    return f1_score(extract_answer(response), golds)
