"""Turn structure of a multi-turn response: runs of model tokens, turn spans and prefix ends.

A response is ``[turn 1 model tokens][tool response][turn 2 model tokens][tool response]…[turn T]``.
``response_mask`` is 1 on model-generated tokens and 0 on environment tokens (tool responses, chat
scaffolding) and padding. Every maximal run of 1s is one model turn, in order; the last run is the
answer turn. This is the encoding contract that :mod:`igpo.advantage` documents.

Prefix ends (for the information-gain step, paper Eq. 3) are lengths of the full sequence
``prompt + response``: ``prefix_ends[0]`` is the prompt alone (t = 0) and ``prefix_ends[t]`` for
``1 ≤ t < T`` is the end of tool turn t, i.e. just after its tool response, which is where the model
would begin turn t + 1.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch


def run_starts_ends(response_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bool masks of the first and last token of every run of 1s.

    Args:
        response_mask: ``(bs, L)`` or ``(L,)``, any dtype; nonzero = model token.
    Returns:
        ``(starts, ends)``, bool tensors of the same shape.
    """
    mask = response_mask.bool()
    prev = torch.zeros_like(mask)
    prev[..., 1:] = mask[..., :-1]
    nxt = torch.zeros_like(mask)
    nxt[..., :-1] = mask[..., 1:]
    return mask & ~prev, mask & ~nxt


def turn_structure(response_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run index, segment index and turn count in one pass (one cumulative sum).

    Args:
        response_mask: ``(bs, L)``.
    Returns:
        ``run_id``: ``(bs, L)`` long, the 0-based run a model token belongs to, -1 on mask-0 tokens;
        ``segment``: ``(bs, L)`` long, run t plus the environment tokens after it (positions before the
        first run are segment 0); ``n_turns``: ``(bs,)`` long, the number of runs.
    """
    starts, _ = run_starts_ends(response_mask)
    # float32 cumsum is exact for counts below 2**24 and several times faster than int64 on CPU
    seg = torch.cumsum(starts.to(torch.float32), dim=-1).long() - 1
    run_id = torch.where(response_mask.bool(), seg, torch.full_like(seg, -1))
    return run_id, seg.clamp(min=0), starts.sum(dim=-1)


def turn_index(response_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn (run) index of every token (-1 on mask-0 tokens) and the number of turns per row.

    Args:
        response_mask: ``(bs, L)``.
    Returns:
        ``(run_id (bs, L) long, n_turns (bs,) long)``; see :func:`turn_structure`.
    """
    run_id, _, n_turns = turn_structure(response_mask)
    return run_id, n_turns


def segment_index(response_mask: torch.Tensor) -> torch.Tensor:
    """Segment of every position: turn t's run plus the environment tokens that follow it.

    Positions before the first run belong to segment 0, so every position has a segment in
    ``[0, max(n_turns, 1) - 1]``. Used to collect rewards robustly (a reward anywhere in segment t
    belongs to turn t).
    """
    return turn_structure(response_mask)[1]


def turn_spans(response_mask: Sequence[int] | torch.Tensor) -> list[tuple[int, int]]:
    """``[start, end)`` spans (response coordinates) of the model turns of one response."""
    mask = torch.as_tensor(response_mask).reshape(-1)
    starts, ends = run_starts_ends(mask)
    s = starts.nonzero().reshape(-1).tolist()
    e = (ends.nonzero().reshape(-1) + 1).tolist()
    return list(zip(s, e, strict=True))


def prefix_ends_from_mask(response_mask: Sequence[int] | torch.Tensor, prompt_len: int) -> list[int]:
    """Prefix ends ``[p, p + start(turn 2), …, p + start(turn T)]`` (length T) of one response.

    A response with no model token still has the t = 0 prefix (the prompt alone).
    """
    if prompt_len < 0:
        raise ValueError(f"prompt_len must be >= 0, got {prompt_len}")
    spans = turn_spans(response_mask)
    return [prompt_len] + [prompt_len + s for s, _ in spans[1:]]


def prefix_ends_from_turn_ends(
    prompt_len: int, tool_turn_ends: Sequence[int], response_len: int
) -> list[int]:
    """Prefix ends from the ends (response coordinates) of the tool turns an agent loop recorded.

    ``tool_turn_ends[k]`` is the response length just after the tool response of turn k + 1. They
    must increase strictly and lie inside the response; a clear error names the offending value.
    """
    if prompt_len < 0:
        raise ValueError(f"prompt_len must be >= 0, got {prompt_len}")
    prev = 0
    for k, end in enumerate(tool_turn_ends):
        try:
            end = operator.index(end)
        except TypeError:
            raise ValueError(f"tool_turn_ends[{k}] must be an integer, got {end!r}") from None
        if end <= prev or end > response_len:
            raise ValueError(
                f"tool_turn_ends[{k}] = {end} must increase strictly and lie in (0, {response_len}] "
                f"(previous {prev})"
            )
        prev = end
    return [prompt_len] + [prompt_len + int(e) for e in tool_turn_ends]
