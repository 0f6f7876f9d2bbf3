"""Engine-agnostic multi-turn search-agent episode: generate → parse tool call → tool → … → answer.

One episode is one rollout ``o = (τ_1 … τ_T)`` of the paper (§2.1): every model turn is
``<think>…</think>`` followed by ``<tool_call>{json}</tool_call>`` or, in the last turn,
``<answer>…</answer>``. :func:`run_episode` drives any token generator (verl's server manager, a local
Hugging Face model, a scripted fake in tests) and any tool executor, and returns an :class:`Episode`
with everything the rest of the pipeline needs: token ids, the response mask, the recorded turn ends
for the information-gain step, the response text to grade, and honest counters for every limit hit.
It imports neither verl nor torch.

Token layout (one assistant message, Search-R1 / DeepResearcher style)
--------------------------------------------------------------------
::

    prompt_ids  = chat template of [system, user] + generation prompt (built by the caller)
    response    = [turn 1 model ids][TOOL 1][turn 2 model ids][TOOL 2] … [turn T model ids]
    TOOL k      = encode("\\n<tool_response>\\n") + encode(body) + encode("\\n</tool_response>\\n")

The tool response is raw text inside the same assistant message, not a new chat turn. Why: the
decoded response then *is* the model-visible text that :func:`igpo.answer.check_format` grades, with no
chat scaffolding (``<|im_end|>\\n<|im_start|>user\\n``) between the tags to strip, and the layout does not
depend on any model family's chat template. Model ids are kept exactly as generated (a turn is only
ever cut to a prefix of itself); tool ids are encoded once and appended; the history is never
re-tokenized. ``response_mask`` is 1 on model ids and 0 on tool ids, so every run of 1s is one model
turn (the contract of :mod:`igpo.advantage`).

Turn rules
----------
* A turn is generated with stop strings ``</tool_call>`` and ``</answer>`` (plus EOS); whatever a
  generator returns after the *first* closing tag is cut off, so a turn holds at most one tool call.
  (One call per turn; a call takes a list of queries, so searches still run in parallel.)
* ``</tool_call>`` first: the call is parsed with :func:`igpo.prompts.parse_tool_call`. A malformed
  call or an unknown tool gets a short corrective tool response (``invalid_tool_calls`` += 1); a tool
  that reports an error or raises gets its error text as the response (``tool_errors`` += 1). Neither
  ends the episode.
* ``</answer>`` first: the episode ends (``ended_with_answer`` if an ``<answer>…</answer>`` was written).
* Neither, after EOS: the episode ends (``end_reason="no_action"``).
* Neither, because the turn ran into its token limit: the turn is kept as generated, counted
  (``turn_limit_hits`` or ``context_limit_hits`` when the context budget was the tighter bound) and the
  episode ends ``truncated``.
* A tool call in the last allowed turn (``max_turns``) is not run (the model would never read the
  answer): the episode ends ``truncated`` with ``max_turns_reached``.
* Tool bodies longer than ``max_tool_response_tokens`` are cut with a visible ``… [truncated]`` marker
  (``tool_response_truncations`` += 1); a body that does not fit in what is left of the context or
  response budget (keeping ``min_turn_tokens`` for the next turn) is cut further
  (``context_limit_hits`` += 1). If not even a cut tool response fits, the call is not run and the
  episode ends ``truncated``.
* Tool text never contains the turn grammar's tags: ``<answer>`` in a retrieved page becomes
  ``[answer]``, so the environment cannot break the format check of the model's response.

Invariant: the response ends with a model turn, and ``tool_turn_ends`` has exactly one entry per
model turn but the last (``len(tool_turn_ends) == num_turns - 1``): ``tool_turn_ends[k]`` is the
response length just after the tool response of turn k + 1, i.e. where turn k + 2 starts. This is what
:func:`igpo.turns.prefix_ends_from_turn_ends` takes, and it gives the T prefix ends of the T turns.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from igpo.answer import extract_answer
from igpo.prompts import TOOL_SCHEMAS, parse_tool_call, validate_tool_arguments

__all__ = [
    "STOP_STRINGS",
    "TOOL_RESPONSE_HEAD",
    "TOOL_RESPONSE_TAIL",
    "TRUNCATION_MARKER",
    "Episode",
    "HandlerClientLike",
    "GenerateFn",
    "Generation",
    "ToolFn",
    "TurnRecord",
    "call_handler_tool",
    "ToolCallRecord",
    "invalid_call_message",
    "run_episode",
    "episode_fields",
    "sanitize_tool_text",
]

#: Stop strings of a model turn: a turn ends with its first tool call or its answer.
STOP_STRINGS: tuple[str, ...] = ("</tool_call>", "</answer>")
TOOL_RESPONSE_HEAD = "\n<tool_response>\n"
TOOL_RESPONSE_TAIL = "\n</tool_response>\n"
TRUNCATION_MARKER = "… [truncated]"

_GRAMMAR_TAG_RE = re.compile(r"<(/?)(think|tool_call|answer|tool_response)>")


class TokenizerLike(Protocol):
    """The part of a Hugging Face tokenizer the loop uses."""

    eos_token_id: int | None

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = ...) -> str: ...


@dataclass
class Generation:
    """What a generator returns for one turn: new token ids and, optionally, their log-probs."""

    token_ids: list[int]
    log_probs: list[float] | None = None


#: ``generate(prompt_ids, max_new_tokens, stop)`` → new ids (a list, an ``(ids, log_probs)`` pair, or
#: any object with ``token_ids`` and optional ``log_probs``, e.g. verl's ``TokenOutput``).
GenerateFn = Callable[[list[int], int, Sequence[str]], Awaitable[Any]]
#: ``tools(name, arguments)`` → ``(text, is_error)``; may raise (counted as a tool error).
ToolFn = Callable[[str, dict[str, Any]], Awaitable[tuple[str, bool]]]


@dataclass
class ToolCallRecord:
    """One tool-call attempt. ``status``: ``ok``, ``error`` (tool failed), ``invalid`` (not parsed),
    ``not_run`` (written in the last allowed turn, or no room left for the response)."""

    turn: int
    name: str | None
    arguments: dict[str, Any] | None
    status: str
    error: str | None = None


@dataclass
class TurnRecord:
    """One model turn. ``start``/``end``: response coordinates of its model ids; ``kind``: ``tool_call``,
    ``invalid_call``, ``answer``, ``no_action`` or ``truncated``; ``tool_end``: response length after
    its tool response (None when no tool response follows)."""

    index: int
    start: int
    end: int
    kind: str
    tool_end: int | None = None


@dataclass
class Episode:
    """The result of :func:`run_episode` (see the module docstring for the layout and rules)."""

    prompt_ids: list[int]
    response_ids: list[int]
    response_mask: list[int]
    response_logprobs: list[float] | None
    tool_turn_ends: list[int]
    response_text: str
    num_turns: int
    turns: list[TurnRecord] = field(default_factory=list)
    tool_calls: list[ToolCallRecord] = field(default_factory=list)
    num_tool_calls: int = 0
    tool_errors: int = 0
    invalid_tool_calls: int = 0
    turn_limit_hits: int = 0
    context_limit_hits: int = 0
    tool_response_truncations: int = 0
    max_turns_reached: bool = False
    truncated: bool = False
    ended_with_answer: bool = False
    end_reason: str = ""

    def counters(self) -> dict[str, int | float]:
        """Flat numeric counters (for metrics and verl's ``extra_fields``)."""
        return {
            "num_turns": self.num_turns,
            "num_tool_calls": self.num_tool_calls,
            "tool_errors": self.tool_errors,
            "invalid_tool_calls": self.invalid_tool_calls,
            "turn_limit_hits": self.turn_limit_hits,
            "context_limit_hits": self.context_limit_hits,
            "tool_response_truncations": self.tool_response_truncations,
            "max_turns_reached": int(self.max_turns_reached),
            "truncated": int(self.truncated),
            "ended_with_answer": int(self.ended_with_answer),
            "response_length": len(self.response_ids),
        }

    def records(self) -> dict[str, list[dict[str, Any]]]:
        """``turns`` and ``tool_calls`` as plain dicts (JSON-friendly)."""
        return {"turns": [asdict(t) for t in self.turns], "tool_calls": [asdict(c) for c in self.tool_calls]}


def sanitize_tool_text(text: str) -> str:
    """Neutralize the turn grammar's tags in environment text: ``<answer>`` → ``[answer]``."""
    return _GRAMMAR_TAG_RE.sub(r"[\1\2]", text)


def invalid_call_message(reason: str, tool_names: Sequence[str]) -> str:
    """The corrective tool response for a call that could not be parsed (no grammar tags in it)."""
    return (
        f"Invalid tool call: {reason}. Write one JSON object "
        '{"name": <tool name>, "arguments": {...}} inside the tool_call tags; '
        f"available tools: {', '.join(tool_names)}."
    )


def _as_generation(out: Any) -> Generation:
    """Normalize what a generator returned (see :data:`GenerateFn`)."""
    if isinstance(out, Generation):
        return Generation(list(out.token_ids), None if out.log_probs is None else list(out.log_probs))
    if hasattr(out, "token_ids"):
        lp = getattr(out, "log_probs", None)
        return Generation(list(out.token_ids), list(lp) if lp else None)
    if isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], (list, tuple)):
        ids, lp = out
        return Generation(list(ids), None if lp is None else list(lp))
    if isinstance(out, (list, tuple)):
        return Generation(list(out), None)
    raise TypeError(
        f"generate returned {type(out).__name__}; expected a list of token ids, an (ids, log_probs) "
        "pair or an object with token_ids"
    )


def _eos_ids(tokenizer: Any, eos_token_ids: Sequence[int] | None) -> set[int]:
    if eos_token_ids is not None:
        return {int(i) for i in eos_token_ids}
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        return set()
    return {int(e) for e in eos} if isinstance(eos, (list, tuple)) else {int(eos)}


def _first_closing_tag(text: str, stop: Sequence[str]) -> tuple[str | None, int]:
    """The earliest stop string in ``text`` and its position (``(None, -1)`` if none)."""
    best, pos = None, -1
    for tag in stop:
        i = text.find(tag)
        if i >= 0 and (pos < 0 or i < pos):
            best, pos = tag, i
    return best, pos


def _cut_after(tokenizer: Any, ids: list[int], tag: str) -> int:
    """Smallest ``k`` such that ``decode(ids[:k])`` contains ``tag`` (binary search; monotone in k)."""
    lo, hi = 1, len(ids)
    while lo < hi:
        mid = (lo + hi) // 2
        if tag in tokenizer.decode(ids[:mid], skip_special_tokens=False):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _check_positive(name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


async def run_episode(
    generate: GenerateFn,
    tools: ToolFn,
    prompt_ids: Sequence[int],
    tokenizer: Any,
    *,
    max_turns: int = 10,
    max_turn_tokens: int = 2000,
    max_context_tokens: int | None = None,
    max_response_tokens: int | None = None,
    max_tool_response_tokens: int = 2000,
    min_turn_tokens: int = 32,
    tool_names: Sequence[str] | None = None,
    stop: Sequence[str] = STOP_STRINGS,
    eos_token_ids: Sequence[int] | None = None,
) -> Episode:
    """Run one multi-turn episode from ``prompt_ids`` (already chat-templated, generation prompt included).

    Args:
        generate: async ``(prompt_ids, max_new_tokens, stop) -> ids | (ids, log_probs) | TokenOutput``;
            sampling parameters are the generator's business.
        tools: async ``(name, arguments) -> (text, is_error)``; only called with parsed, valid calls.
        prompt_ids: the prompt token ids (kept as is).
        tokenizer: a Hugging Face tokenizer (``encode``, ``decode``, ``eos_token_id``).
        max_turns: maximum number of model turns (the paper uses 10).
        max_turn_tokens: maximum new tokens of one model turn (the paper: 2000).
        max_context_tokens: maximum ``len(prompt) + len(response)`` (None: unbounded).
        max_response_tokens: maximum ``len(response)`` (verl's ``rollout.response_length``; None: unbounded).
        max_tool_response_tokens: maximum tokens of one tool response body (before the marker and tags).
        min_turn_tokens: a tool response is cut (or, if even a cut one does not fit, the call is not
            run) so that at least this many tokens (capped at ``max_turn_tokens``) are left under the
            context/response budgets for the next turn.
        tool_names: tools the model may call (default: all of :data:`igpo.prompts.TOOL_SCHEMAS`).
        stop: closing tags that end a turn.
        eos_token_ids: ids that end generation (default: ``tokenizer.eos_token_id``).
    """
    _check_positive("max_turns", max_turns)
    _check_positive("max_turn_tokens", max_turn_tokens)
    _check_positive("max_context_tokens", max_context_tokens, allow_none=True)
    _check_positive("max_response_tokens", max_response_tokens, allow_none=True)
    _check_positive("max_tool_response_tokens", max_tool_response_tokens)
    _check_positive("min_turn_tokens", min_turn_tokens)
    reserve = min(min_turn_tokens, max_turn_tokens)
    prompt = [int(t) for t in prompt_ids]
    if not prompt:
        raise ValueError("prompt_ids must not be empty")
    if max_context_tokens is not None and len(prompt) >= max_context_tokens:
        raise ValueError(
            f"prompt_ids has {len(prompt)} tokens, which leaves no room under max_context_tokens="
            f"{max_context_tokens}"
        )
    names = list(TOOL_SCHEMAS) if tool_names is None else list(tool_names)
    if not names:
        raise ValueError("tool_names must name at least one tool, got an empty list")
    stop = list(stop)
    eos = _eos_ids(tokenizer, eos_token_ids)

    def encode(text: str) -> list[int]:
        return list(tokenizer.encode(text, add_special_tokens=False))

    head_ids, tail_ids, marker_ids = (
        encode(TOOL_RESPONSE_HEAD),
        encode(TOOL_RESPONSE_TAIL),
        encode(TRUNCATION_MARKER),
    )

    ep = Episode(
        prompt_ids=prompt,
        response_ids=[],
        response_mask=[],
        response_logprobs=[],
        tool_turn_ends=[],
        response_text="",
        num_turns=0,
    )
    logprobs_ok = True

    def budget_left() -> int:
        """Tokens that may still be appended to the response under the context/response budgets."""
        left = sys.maxsize
        if max_context_tokens is not None:
            left = min(left, max_context_tokens - len(prompt) - len(ep.response_ids))
        if max_response_tokens is not None:
            left = min(left, max_response_tokens - len(ep.response_ids))
        return left

    def append(ids: list[int], mask: int, logprobs: list[float] | None) -> None:
        nonlocal logprobs_ok
        ep.response_ids.extend(ids)
        ep.response_mask.extend([mask] * len(ids))
        if logprobs is None:
            if mask == 1:
                logprobs_ok = False
            logprobs = [0.0] * len(ids)
        ep.response_logprobs.extend(logprobs)

    def finish_unanswered_call(call: ToolCallRecord, reason: str) -> Episode:
        """End after a tool call that gets no response (the call is not run)."""
        if call.status == "ok":
            call.status = "not_run"
        else:
            ep.invalid_tool_calls += 1
        return finish(reason, truncated=True)

    def finish(reason: str, truncated: bool = False) -> Episode:
        ep.end_reason = reason
        ep.truncated = ep.truncated or truncated
        ep.response_text = tokenizer.decode(ep.response_ids, skip_special_tokens=True)
        if not logprobs_ok:
            ep.response_logprobs = None
        return ep

    for turn in range(max_turns):
        room = budget_left()
        if room < 1:  # only reachable on the first turn: a tool response always leaves a token of room
            ep.context_limit_hits += 1
            return _drop_trailing_tool_response(ep, finish, "context_limit", truncated=True)
        max_new = min(max_turn_tokens, room)
        gen = _as_generation(await generate(prompt + ep.response_ids, max_new, stop))
        ids, lps = gen.token_ids, gen.log_probs
        if lps is not None and len(lps) != len(ids):
            raise ValueError(f"generate returned {len(ids)} token ids but {len(lps)} log_probs")
        overran = len(ids) > max_new
        if overran:  # a generator that ignores max_new_tokens: enforce the limit, visibly
            ids, lps = ids[:max_new], (lps[:max_new] if lps is not None else None)
        text = tokenizer.decode(ids, skip_special_tokens=False)
        tag, _ = _first_closing_tag(text, stop)
        if tag is not None:
            k = _cut_after(tokenizer, ids, tag)
            ids, lps = ids[:k], (lps[:k] if lps is not None else None)
            text = tokenizer.decode(ids, skip_special_tokens=False)
        if not ids:
            # Nothing generated: no model turn to record. The response must end with a model turn.
            return _drop_trailing_tool_response(ep, finish, "empty_turn", truncated=False)
        start = len(ep.response_ids)
        append(ids, 1, lps)
        ep.num_turns += 1
        record = TurnRecord(index=turn, start=start, end=len(ep.response_ids), kind="")
        ep.turns.append(record)

        if tag is None:
            hit_limit = overran or (len(ids) >= max_new and ids[-1] not in eos)
            if not hit_limit:
                record.kind = "no_action"
                return finish("no_action")
            record.kind = "truncated"
            if max_new < max_turn_tokens:
                ep.context_limit_hits += 1
                return finish("context_limit", truncated=True)
            ep.turn_limit_hits += 1
            return finish("turn_limit", truncated=True)

        if tag != "</tool_call>":
            record.kind = "answer"
            ep.ended_with_answer = extract_answer(text) is not None
            return finish("answer")

        # A tool call.
        try:
            name, arguments = parse_tool_call(text, tools=names)
        except ValueError as e:
            call = ToolCallRecord(turn=turn, name=None, arguments=None, status="invalid", error=str(e))
            record.kind = "invalid_call"
            body = invalid_call_message(str(e), names)
        else:
            call = ToolCallRecord(turn=turn, name=name, arguments=arguments, status="ok")
            record.kind = "tool_call"
            body = None
        ep.tool_calls.append(call)

        if turn == max_turns - 1:
            # The model gets no further turn to read a response: do not run the call.
            ep.max_turns_reached = True
            return finish_unanswered_call(call, "max_turns")
        # Room for the tool block, leaving ``min_turn_tokens`` for the next turn.
        fit = budget_left() - reserve - len(head_ids) - len(tail_ids)
        if fit < len(marker_ids):  # not even a cut response fits: end before running the call
            ep.context_limit_hits += 1
            return finish_unanswered_call(call, "context_limit")

        if body is None:
            ep.num_tool_calls += 1
            try:
                body, is_error = await tools(name, arguments)
                body = str(body)
            except Exception as e:  # a tool must never crash the rollout
                body, is_error = f"Tool {name} failed: {type(e).__name__}: {e}", True
            if is_error:
                ep.tool_errors += 1
                call.status, call.error = "error", body[:500]
        else:
            ep.invalid_tool_calls += 1

        body_ids = encode(sanitize_tool_text(body))
        if len(body_ids) > max_tool_response_tokens:
            body_ids = body_ids[:max_tool_response_tokens] + marker_ids
            ep.tool_response_truncations += 1
        if len(body_ids) > fit:
            body_ids = body_ids[: fit - len(marker_ids)] + marker_ids
            ep.context_limit_hits += 1
        append(head_ids + body_ids + tail_ids, 0, None)
        record.tool_end = len(ep.response_ids)
        ep.tool_turn_ends.append(record.tool_end)

    ep.max_turns_reached = True  # unreachable in practice: the last turn returns above
    return finish("max_turns", truncated=True)


def _drop_trailing_tool_response(
    ep: Episode, finish: Callable[..., Episode], reason: str, truncated: bool
) -> Episode:
    """Remove a tool response that no model turn follows (keeps the response-ends-with-a-turn invariant)."""
    if ep.turns and ep.turns[-1].tool_end is not None:
        cut = ep.turns[-1].end
        del ep.response_ids[cut:], ep.response_mask[cut:]
        if ep.response_logprobs is not None:
            del ep.response_logprobs[cut:]
        ep.tool_turn_ends.pop()
        ep.turns[-1].tool_end = None
    return finish(reason, truncated=truncated)


class HandlerClientLike(Protocol):
    """The part of :class:`handler.client.HandlerClient` the tools use (text methods that never raise
    on a handler failure and return a ``str`` with an ``ok`` flag)."""

    async def search_text(self, queries: list[str], topk: int | None = None) -> str: ...

    async def web_search(self, queries: list[str]) -> str: ...

    async def browse_webpage(self, urls: list[str], question: str) -> str: ...


async def call_handler_tool(
    client: HandlerClientLike, name: str, arguments: Mapping[str, Any], topk: int | None = None
) -> tuple[str, bool]:
    """Run one parsed tool call on the search handler: ``(text, is_error)``, never raises on failure.

    ``search`` → ``client.search_text`` (local ``/retrieve``), ``web_search`` → ``client.web_search``,
    ``browse_webpage`` → ``client.browse_webpage`` (``goal``, or its alias ``question``). Arguments are
    checked against the tool's schema first (a bad call gives a readable error text). Bind the client
    (``functools.partial(call_handler_tool, client)``) to get a :data:`ToolFn` for :func:`run_episode`.
    """
    try:
        validate_tool_arguments(name, arguments)
    except ValueError as e:
        return f"Invalid arguments: {e}.", True
    if name == "search":
        result = await client.search_text(list(arguments["query"]), topk)
    elif name == "web_search":
        result = await client.web_search(list(arguments["query"]))
    elif name == "browse_webpage":
        goal = arguments.get("goal") or arguments.get("question") or ""
        result = await client.browse_webpage(list(arguments["url_list"]), goal)
    else:  # validate_tool_arguments knows only these three
        raise AssertionError(name)
    return str(result), not getattr(result, "ok", True)


def episode_fields(ep: Episode) -> Mapping[str, Any]:
    """Everything about ``ep`` besides the token lists, as plain values (for logs and extra fields)."""
    return {
        **ep.counters(),
        **ep.records(),
        "tool_turn_ends": list(ep.tool_turn_ends),
        "end_reason": ep.end_reason,
    }
