"""Batched sampling from a Hugging Face causal LM for the single-process engine.

:func:`sample_batch` decodes many prompts at once with a KV cache (left padding), each row with its
own ``torch.Generator``, so a row's tokens do not depend on which other rows share its batch.
:class:`LockstepBatcher` turns it into the async ``generate`` callable that
:func:`igpo.rollout.run_episode` drives: concurrent episodes submit their next turn and the batcher
runs one batch as soon as every live episode is waiting, so batch composition, and hence the run, is
deterministic whatever the timing of tool calls.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


@torch.no_grad()
def sample_batch(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: Sequence[int],
    generators: Sequence[torch.Generator],
    tokenizer,
    stop: Sequence[str] = (),
    eos_token_ids: Sequence[int] = (),
    temperature: float = 1.0,
    top_p: float = 1.0,
) -> list[list[int]]:
    """Sample a continuation of every prompt; a row stops at EOS, a stop string or its token budget.

    Args:
        model: causal LM in eval mode.
        prompts: token ids per row (any lengths).
        max_new_tokens: budget per row.
        generators: one ``torch.Generator`` per row (on CPU).
        tokenizer: decodes the tail of a row to find stop strings.
        stop: stop strings; the row ends once its generated text contains one.
        eos_token_ids: ids that end a row (kept in the output).
        temperature: 0 = greedy.
        top_p: nucleus sampling threshold.
    Returns:
        generated ids per row (stop string or EOS included, nothing after it).
    """
    n = len(prompts)
    if not (len(max_new_tokens) == len(generators) == n):
        raise ValueError("prompts, max_new_tokens and generators must have the same length")
    if n == 0:
        return []
    device = next(model.parameters()).device
    lens = [len(p) for p in prompts]
    width = max(lens)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((n, width), pad, dtype=torch.long)
    attn = torch.zeros((n, width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.as_tensor(list(p), dtype=torch.long)
        attn[i, width - len(p) :] = 1
    ids, attn = ids.to(device), attn.to(device)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True)
    past, logits = out.past_key_values, out.logits[:, -1, :].float()
    next_pos = pos[:, -1] + 1
    eos = set(int(e) for e in eos_token_ids)
    budget = [int(m) for m in max_new_tokens]
    done = [b <= 0 for b in budget]
    gen: list[list[int]] = [[] for _ in range(n)]
    tail = max((len(tokenizer.encode(s, add_special_tokens=False)) for s in stop), default=0) + 2
    for _ in range(max(budget, default=0)):
        if all(done):
            break
        tokens = torch.full((n,), pad, dtype=torch.long)
        for i in range(n):
            if done[i]:
                continue
            tok = _pick(logits[i], generators[i], temperature, top_p)
            gen[i].append(tok)
            tokens[i] = tok
            if tok in eos or len(gen[i]) >= budget[i]:
                done[i] = True
            elif stop:
                text = tokenizer.decode(gen[i][-tail:], skip_special_tokens=False)
                if any(s in text for s in stop):
                    done[i] = True
        if all(done):
            break
        attn = torch.cat([attn, torch.ones((n, 1), dtype=attn.dtype, device=device)], dim=1)
        out = model(
            input_ids=tokens.unsqueeze(1).to(device),
            attention_mask=attn,
            position_ids=next_pos.unsqueeze(1),
            past_key_values=past,
            use_cache=True,
        )
        past, logits = out.past_key_values, out.logits[:, -1, :].float()
        next_pos = next_pos + 1
    return gen


def _pick(logits: torch.Tensor, generator: torch.Generator, temperature: float, top_p: float) -> int:
    """One token from ``(V,)`` logits: greedy at temperature 0, else (nucleus) sampling."""
    if temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.cpu() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        keep = sorted_p.cumsum(0) - sorted_p < top_p
        probs = torch.zeros_like(probs).scatter_(0, order[keep], sorted_p[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


@dataclass
class _Request:
    key: int
    prompt: list[int]
    max_new: int
    stop: tuple[str, ...]
    future: asyncio.Future


@dataclass
class LockstepBatcher:
    """Async ``generate`` for many concurrent episodes, batched in lockstep.

    Use :meth:`for_episode` to get episode ``key``'s generate callable and call :meth:`finished` when
    that episode ends. A batch runs when every live episode has a request waiting.
    """

    model: torch.nn.Module
    tokenizer: object
    seeds: dict[int, int]
    temperature: float = 1.0
    top_p: float = 1.0
    eos_token_ids: Sequence[int] = ()
    batches: int = 0
    _live: set[int] = field(default_factory=set)
    _pending: dict[int, _Request] = field(default_factory=dict)
    _gens: dict[int, torch.Generator] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._live = set(self.seeds)
        self._gens = {k: torch.Generator().manual_seed(int(s)) for k, s in self.seeds.items()}

    def for_episode(self, key: int):
        """The ``generate(prompt_ids, max_new_tokens, stop)`` callable of episode ``key``."""
        if key not in self._live:
            raise KeyError(f"episode {key} is not live in this batcher")

        async def generate(prompt_ids: Sequence[int], max_new_tokens: int, stop: Sequence[str]) -> list[int]:
            fut = asyncio.get_running_loop().create_future()
            self._pending[key] = _Request(key, list(prompt_ids), int(max_new_tokens), tuple(stop), fut)
            self._maybe_run()
            return await fut

        return generate

    def finished(self, key: int) -> None:
        """Mark episode ``key`` as done (it will not ask again)."""
        self._live.discard(key)
        self._maybe_run()

    def _maybe_run(self) -> None:
        if not self._pending or len(self._pending) < len(self._live):
            return
        reqs = [self._pending.pop(k) for k in sorted(self._pending)]
        self.batches += 1
        try:
            outs = sample_batch(
                self.model,
                [r.prompt for r in reqs],
                [r.max_new for r in reqs],
                [self._gens[r.key] for r in reqs],
                self.tokenizer,
                stop=sorted(set().union(*(r.stop for r in reqs))),
                eos_token_ids=self.eos_token_ids,
                temperature=self.temperature,
                top_p=self.top_p,
            )
        except Exception as e:  # surface the failure in every waiting episode, never hang them
            for r in reqs:
                r.future.set_exception(e)
            return
        for r, o in zip(reqs, outs, strict=True):
            r.future.set_result(o)
