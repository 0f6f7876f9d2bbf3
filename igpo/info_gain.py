"""Per-turn ground-truth log-probabilities and information gain (paper Eq. 3–4, Fig. 3, App. F).

For a trajectory ``x = prompt + response`` with prefix ends ``p_0 < p_1 < … < p_{T-1}`` (``p_0`` is the
prompt alone, ``p_t`` the end of tool turn t, see :mod:`igpo.turns`) and the ground-truth answer
wrapped as the agent would write it, ``c = copy_ids`` (length G), with a score mask ``m`` over ``c``
(True on the gold-answer tokens), the value of turn t is::

    lp_t = mean_{j : m_j} log π(c_j | x[:p_t], c_<j)

Three ways to compute it, all exact (equal to 1e-6 in float64):

* ``"naive"`` — one forward per prefix over ``x[:p_t] + c`` (the reference; T forwards).
* ``"dense"`` — the paper's layout (Fig. 3): the T copies are appended after the trajectory and
  one forward runs with a dense 4-D additive mask of size ``(N, N)``, ``N = s + T·g``. Readable
  reference for the layout; quadratic memory, only for tests and small inputs.
* ``"vectorized"`` (production) — the same appended layout and one forward, but attention runs
  through :func:`copy_attention`, an attention function registered with transformers'
  ``AttentionInterface`` as ``"igpo_copies"``: ordinary causal SDPA over each trajectory, and for
  the copies of a sequence one SDPA call over that sequence's keys with a ``(C, n + C)`` boolean mask
  (``C`` = appended copy tokens of the sequence, ``n`` its length). No ``N × N`` tensor is ever
  built, so memory grows linearly in the sequence length (``C`` is small and fixed).

Appended layout of one packed row (several sequences concatenated, as verl's remove-padding
path does)::

    [ x_0 (n_0) | copy_0 of x_0 | … | copy_{T_0-1} of x_0 | x_1 (n_1) | copies of x_1 | … ]

Only the *predictor* tokens of a copy are appended: ``c[:a]`` where ``a`` is the index of the last
scored token. ``c_0`` is predicted by the last prefix token ``x[p_t - 1]`` (a trajectory token,
whose causal attention sees exactly ``x[:p_t]``) and ``c_j`` (``j ≥ 1``) by copy token ``c_{j-1}``.
Tokens after the last scored one (e.g. ``</answer>``) predict nothing scored and are not appended.

Mask predicate for a query ``q`` and key ``k`` (packed coordinates): same sequence, and
    * ``q`` a trajectory token: ``k`` a trajectory token with ``k ≤ q`` (ordinary causal);
    * ``q`` a token of copy t: ``k`` a trajectory token with local position ``< p_t``, or ``k`` in
      copy t with ``k ≤ q``.
Position ids of copy t continue from the prefix end: ``p_t, p_t + 1, …``.

The core is torch + transformers only (no verl import).
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from igpo.prompts import ANSWER_WRAPPER

__all__ = [
    "ATTN_IMPLEMENTATION",
    "METHODS",
    "AnswerTemplateError",
    "CopyLayout",
    "answer_copy",
    "answer_logprobs",
    "build_copy_layout",
    "check_answer_template",
    "copy_attention",
    "copy_attention_enabled",
    "ground_truth_gain",
    "information_gain",
    "pack_input_ids",
    "packed_logprobs_with_copies",
    "register_copy_attention",
    "sample_answers",
    "split_outputs",
    "token_logprobs",
]

#: Name under which :func:`copy_attention` is registered in transformers' ``AttentionInterface``.
ATTN_IMPLEMENTATION = "igpo_copies"
#: Accepted values of ``method``.
METHODS = ("vectorized", "dense", "naive")


# --------------------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class CopyLayout:
    """Where everything lies in one packed row with answer copies appended.

    All index tensors are 1-D ``long`` on CPU, over the packed row of length ``total_len`` (= N).

    Attributes:
        seq_lens: length ``n_i`` of every trajectory.
        prefix_ends: prefix ends ``p_{i,0} < … < p_{i,T_i-1}`` of every trajectory (local coords).
        copy_lens: full length ``G_i`` of every sequence's wrapped answer.
        append_lens: tokens appended per copy, ``a_i`` (index of the last scored token of copy i).
        seq_starts: packed index where the block of sequence i starts.
        copy_starts: ``copy_starts[i][t]`` packed index of the first appended token of copy t.
        total_len: N = Σ_i (n_i + T_i · a_i).
        position_ids: ``(N,)`` position id of every packed token.
        seq_id: ``(N,)`` sequence of every packed token.
        copy_turn: ``(N,)`` turn t of a copy token, -1 on trajectory tokens.
        prefix_end: ``(N,)`` packed end (exclusive) of the trajectory keys the token sees:
            ``q + 1`` for a trajectory token, ``seq_start + p_t`` for a token of copy t.
        self_start: ``(N,)`` packed start of the token's own copy (it sees ``[self_start, q]``);
            ``q + 1`` (nothing more) for trajectory tokens.
    """

    seq_lens: tuple[int, ...]
    prefix_ends: tuple[tuple[int, ...], ...]
    copy_lens: tuple[int, ...]
    append_lens: tuple[int, ...]
    seq_starts: tuple[int, ...]
    copy_starts: tuple[tuple[int, ...], ...]
    total_len: int
    position_ids: torch.Tensor
    seq_id: torch.Tensor
    copy_turn: torch.Tensor
    prefix_end: torch.Tensor
    self_start: torch.Tensor
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens)

    @property
    def max_span(self) -> int:
        """Largest position distance any query can have to a key it sees (for sliding windows)."""
        return max(n + a for n, a in zip(self.seq_lens, self.append_lens, strict=True))

    def block_len(self, i: int) -> int:
        """Packed length of sequence i's block (trajectory + appended copies)."""
        return self.seq_lens[i] + len(self.prefix_ends[i]) * self.append_lens[i]

    def trajectory_index(self, i: int) -> torch.Tensor:
        """``(n_i,)`` packed indices of trajectory i's tokens."""
        s = self.seq_starts[i]
        return torch.arange(s, s + self.seq_lens[i])

    def answer_predictors(self, i: int) -> torch.Tensor:
        """``(T_i, a_i + 1)`` packed indices whose logits predict ``copy[:a_i + 1]`` for each turn."""
        s, a = self.seq_starts[i], self.append_lens[i]
        rows = []
        for t, p in enumerate(self.prefix_ends[i]):
            c0 = self.copy_starts[i][t]
            rows.append(torch.cat([torch.tensor([s + p - 1]), torch.arange(c0, c0 + a)]))
        return torch.stack(rows)

    def copy_mask(self, i: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """``(T_i · a_i, n_i + T_i · a_i)`` bool: which keys of block i each appended copy token sees.

        Keys are the block's packed range ``[seq_start, seq_start + block_len)``. Cached per device.
        """
        key = ("copy_mask", i, str(device))
        if key not in self._cache:
            s, n, c = self.seq_starts[i], self.seq_lens[i], self.block_len(i) - self.seq_lens[i]
            q = torch.arange(s + n, s + n + c)
            k = torch.arange(s, s + n + c)
            pe, ss = self.prefix_end[q][:, None], self.self_start[q][:, None]
            kk = k[None, :]
            mask = (kk < pe) | ((kk >= ss) & (kk <= q[:, None]))
            self._cache[key] = mask.to(device)
        return self._cache[key]

    def dense_mask(self) -> torch.Tensor:
        """``(N, N)`` bool mask of the whole row (the readable reference; quadratic memory)."""
        q = torch.arange(self.total_len)[:, None]
        k = torch.arange(self.total_len)[None, :]
        same = self.seq_id[:, None] == self.seq_id[None, :]
        k_traj = (self.copy_turn == -1)[None, :]
        lo = torch.tensor(self.seq_starts)[self.seq_id][:, None]
        in_prefix = k_traj & (k >= lo) & (k < self.prefix_end[:, None])
        in_self = (k >= self.self_start[:, None]) & (k <= q)
        return same & (in_prefix | in_self)


def _as_int(v: object, name: str) -> int:
    if isinstance(v, torch.Tensor):
        if v.numel() != 1:
            raise ValueError(f"{name} must be an integer, got a tensor of shape {tuple(v.shape)}")
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, int):
        try:
            import operator

            return operator.index(v)  # numpy ints
        except TypeError:
            raise ValueError(f"{name} must be an integer, got {v!r}") from None
    return v


def build_copy_layout(
    seq_lens: Sequence[int],
    prefix_ends: Sequence[Sequence[int]],
    append_lens: Sequence[int],
    copy_lens: Sequence[int] | None = None,
) -> CopyLayout:
    """Pure layout builder for one packed row with answer copies appended (see module docstring).

    Args:
        seq_lens: ``n_i``, the trajectory lengths (prompt + response), each ≥ 1.
        prefix_ends: per sequence, strictly increasing prefix ends in ``[1, n_i]``; at least one.
        append_lens: per sequence, how many copy tokens are appended per turn (``a_i ≥ 0``; the
            index of the last scored token of the copy).
        copy_lens: per sequence, the full copy length ``G_i`` (informative; defaults to
            ``a_i + 1``).
    Returns:
        A :class:`CopyLayout`.
    """
    if not (len(seq_lens) == len(prefix_ends) == len(append_lens)):
        raise ValueError(
            f"seq_lens, prefix_ends and append_lens must have the same length, got "
            f"{len(seq_lens)}, {len(prefix_ends)}, {len(append_lens)}"
        )
    if len(seq_lens) == 0:
        raise ValueError("at least one sequence is needed, got seq_lens = []")
    if copy_lens is None:
        copy_lens = [int(a) + 1 for a in append_lens]
    pos, sid, turn, pend, sstart = [], [], [], [], []
    starts, cstarts, pe_all = [], [], []
    off = 0
    for i, (n, pes, a) in enumerate(zip(seq_lens, prefix_ends, append_lens, strict=True)):
        n = _as_int(n, f"seq_lens[{i}]")
        a = _as_int(a, f"append_lens[{i}]")
        if n < 1:
            raise ValueError(f"seq_lens[{i}] must be >= 1, got {n}")
        if a < 0:
            raise ValueError(f"append_lens[{i}] must be >= 0, got {a}")
        pes = [_as_int(p, f"prefix_ends[{i}][{t}]") for t, p in enumerate(pes)]
        if not pes:
            raise ValueError(f"prefix_ends[{i}] is empty: every sequence needs the t = 0 prefix")
        prev = 0
        for t, p in enumerate(pes):
            if p <= prev or p > n:
                raise ValueError(
                    f"prefix_ends[{i}][{t}] = {p} must increase strictly and lie in [1, {n}] "
                    f"(seq_lens[{i}] = {n}, previous {prev})"
                )
            prev = p
        starts.append(off)
        pe_all.append(tuple(pes))
        # trajectory
        idx = torch.arange(off, off + n)
        pos.append(torch.arange(n))
        sid.append(torch.full((n,), i))
        turn.append(torch.full((n,), -1))
        pend.append(idx + 1)
        sstart.append(idx + 1)
        off += n
        cs = []
        for t, p in enumerate(pes):
            cs.append(off)
            pos.append(torch.arange(p, p + a))
            sid.append(torch.full((a,), i))
            turn.append(torch.full((a,), t))
            pend.append(torch.full((a,), starts[-1] + p))
            sstart.append(torch.full((a,), off))
            off += a
        cstarts.append(tuple(cs))
    return CopyLayout(
        seq_lens=tuple(int(n) for n in seq_lens),
        prefix_ends=tuple(pe_all),
        copy_lens=tuple(int(g) for g in copy_lens),
        append_lens=tuple(int(a) for a in append_lens),
        seq_starts=tuple(starts),
        copy_starts=tuple(cstarts),
        total_len=off,
        position_ids=torch.cat(pos).long(),
        seq_id=torch.cat(sid).long(),
        copy_turn=torch.cat(turn).long(),
        prefix_end=torch.cat(pend).long(),
        self_start=torch.cat(sstart).long(),
    )


def pack_input_ids(
    layout: CopyLayout, sequences: Sequence[torch.Tensor], copies: Sequence[torch.Tensor]
) -> torch.Tensor:
    """``(N,)`` packed input ids: each trajectory followed by ``T_i`` copies of ``copy_i[:a_i]``."""
    parts = []
    for i, (x, c) in enumerate(zip(sequences, copies, strict=True)):
        parts.append(x.reshape(-1))
        head = c.reshape(-1)[: layout.append_lens[i]].to(x.device)
        parts.extend([head] * len(layout.prefix_ends[i]))
    return torch.cat(parts)


def _score_info(copy_ids: torch.Tensor, score_mask: torch.Tensor, name: str) -> int:
    """Validate one copy and its score mask; return ``a`` = index of the last scored token."""
    if copy_ids.dim() != 1 or score_mask.dim() != 1 or copy_ids.numel() != score_mask.numel():
        raise ValueError(
            f"{name}: copy_ids and score_mask must be 1-D of equal length, got shapes "
            f"{tuple(copy_ids.shape)} and {tuple(score_mask.shape)}"
        )
    nz = score_mask.bool().nonzero().reshape(-1)
    if nz.numel() == 0:
        raise ValueError(f"{name}: score_mask selects no token (nothing to average)")
    return int(nz[-1])


# --------------------------------------------------------------------------------------------------
# Log-probs from logits (chunked, to avoid a second N × V tensor)
# --------------------------------------------------------------------------------------------------


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """``log softmax(logits)[k, targets[k]]`` row by row.

    Args:
        logits: ``(M, V)``; half/bfloat16 are upcast to float32 chunk by chunk.
        targets: ``(M,)`` long.
    Returns:
        ``(M,)`` log-probs in float32 (or the logits' dtype when it is float32/float64).
    """
    out_dtype = logits.dtype if logits.dtype in (torch.float32, torch.float64) else torch.float32
    out = torch.empty(logits.shape[0], dtype=out_dtype, device=logits.device)
    for s in range(0, logits.shape[0], chunk):
        lg = logits[s : s + chunk].to(out_dtype)
        tgt = targets[s : s + chunk].to(logits.device)
        out[s : s + chunk] = lg.gather(-1, tgt[:, None]).squeeze(-1) - torch.logsumexp(lg, dim=-1)
    return out


def _mean_scored(lp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``lp``: ``(T, a + 1)``; ``mask``: ``(a + 1,)`` bool → ``(T,)`` mean over scored positions."""
    m = mask.to(lp.device, lp.dtype)
    return (lp * m).sum(-1) / m.sum()


# --------------------------------------------------------------------------------------------------
# Production attention: registered with transformers' AttentionInterface
# --------------------------------------------------------------------------------------------------


def copy_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    igpo_layout: CopyLayout | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Attention for a packed row with answer copies appended; no ``N × N`` tensor anywhere.

    Per sequence i (block ``[s, s + n + C)``): causal SDPA over the trajectory ``[s, s + n)``, then
    one SDPA call for the ``C`` appended copy tokens over the block's keys with
    :meth:`CopyLayout.copy_mask` (``(C, n + C)`` bool). Memory per layer: the usual ``O(N·h)``
    activations plus ``O(C·n)`` for the mask and the copies' scores.

    Args:
        query: ``(1, H, N, D)``; key, value: ``(1, H_kv, N, D)`` (GQA supported).
        attention_mask: must be ``None`` (the layout carries the mask).
        igpo_layout: the :class:`CopyLayout` of the row (passed as a forward kwarg).
    Returns:
        ``((1, N, H, D) output, None)`` like transformers' attention functions.
    """
    if igpo_layout is None:
        raise ValueError(
            f"attn_implementation '{ATTN_IMPLEMENTATION}' needs the igpo_layout kwarg; use "
            "packed_logprobs_with_copies() or copy_attention_enabled()"
        )
    if attention_mask is not None:
        raise ValueError(
            f"'{ATTN_IMPLEMENTATION}' does not take an attention_mask, got {type(attention_mask)}"
        )
    sw = kwargs.pop("sliding_window", None)
    if sw is not None and sw < igpo_layout.max_span:
        raise NotImplementedError(
            f"'{ATTN_IMPLEMENTATION}': sliding_window={sw} is shorter than a sequence block "
            f"({igpo_layout.max_span} positions); sliding-window attention is not supported"
        )
    for unsupported in ("softcap", "s_aux"):
        if kwargs.get(unsupported) is not None:
            raise NotImplementedError(
                f"'{ATTN_IMPLEMENTATION}' does not support {unsupported}={kwargs[unsupported]!r}"
            )
    if module.training and dropout > 0:
        raise NotImplementedError(f"'{ATTN_IMPLEMENTATION}' does not support attention dropout")
    b, h, n_tot, _ = query.shape
    if b != 1 or n_tot != igpo_layout.total_len:
        raise ValueError(
            f"'{ATTN_IMPLEMENTATION}' expects one packed row of length {igpo_layout.total_len}, got query "
            f"shape {tuple(query.shape)}"
        )
    gqa = key.shape[1] != h
    out = torch.empty_like(query)
    for i in range(igpo_layout.num_seqs):
        s, n = igpo_layout.seq_starts[i], igpo_layout.seq_lens[i]
        e = s + igpo_layout.block_len(i)
        out[:, :, s : s + n] = F.scaled_dot_product_attention(
            query[:, :, s : s + n],
            key[:, :, s : s + n],
            value[:, :, s : s + n],
            is_causal=True,
            scale=scaling,
            enable_gqa=gqa,
        )
        if e > s + n:
            out[:, :, s + n : e] = F.scaled_dot_product_attention(
                query[:, :, s + n : e],
                key[:, :, s:e],
                value[:, :, s:e],
                attn_mask=igpo_layout.copy_mask(i, query.device),
                scale=scaling,
                enable_gqa=gqa,
            )
    return out.transpose(1, 2).contiguous(), None


def register_copy_attention() -> None:
    """Register :func:`copy_attention` as ``"igpo_copies"`` (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_IMPLEMENTATION, copy_attention)


def _configs(model: torch.nn.Module) -> list:
    """Distinct config objects of the model and its submodules (attention layers read their own)."""
    seen: dict[int, object] = {}
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation"):
            seen.setdefault(id(cfg), cfg)
    return list(seen.values())


@contextlib.contextmanager
def copy_attention_enabled(model: torch.nn.Module) -> Iterator[None]:
    """Temporarily switch ``model`` to the ``"igpo_copies"`` attention implementation.

    Inside, a forward must get ``igpo_layout=<CopyLayout>``, ``attention_mask=None`` and the
    layout's ``position_ids``. Since ``"igpo_copies"`` has no mask-creation function, transformers
    builds no mask at all (no ``N × N`` allocation). The previous implementation is restored on exit.
    """
    register_copy_attention()
    cfgs = _configs(model)
    old = [c._attn_implementation for c in cfgs]
    try:
        for c in cfgs:
            c._attn_implementation = ATTN_IMPLEMENTATION
        yield
    finally:
        for c, o in zip(cfgs, old, strict=True):
            c._attn_implementation = o


# --------------------------------------------------------------------------------------------------
# Forwards
# --------------------------------------------------------------------------------------------------


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _logits(
    model: torch.nn.Module, ids: torch.Tensor, keep: torch.Tensor | None, temperature: float = 1.0, **kw
) -> torch.Tensor:
    """Logits ``(M, V)`` at packed positions ``keep`` (all positions when None) of a 1-row forward,
    divided by ``temperature`` (the sampling temperature, as verl's log-prob recompute does)."""
    dev = _model_device(model)
    logits_to_keep = 0 if keep is None else keep.to(dev)
    out = model(input_ids=ids.reshape(1, -1).to(dev), use_cache=False, logits_to_keep=logits_to_keep, **kw)
    return out.logits[0] if temperature == 1.0 else out.logits[0] / temperature


def split_outputs(
    layout: CopyLayout,
    logits: torch.Tensor,
    sequences: Sequence[torch.Tensor],
    copies: Sequence[torch.Tensor],
    score_masks: Sequence[torch.Tensor],
    with_token_logprobs: bool = True,
    logits_rows: torch.Tensor | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Split the logits of one packed forward into trajectory token log-probs and answer log-probs.

    Args:
        layout: the row's layout.
        logits: ``(N, V)`` logits of the whole packed row, or ``(M, V)`` logits of some rows only
            (e.g. from ``logits_to_keep``) together with ``logits_rows``.
        sequences, copies, score_masks: as for :func:`packed_logprobs_with_copies`.
        with_token_logprobs: whether to compute the trajectories' token log-probs.
        logits_rows: ``(N,)`` long, row of ``logits`` holding packed position k (-1: absent).
    Returns:
        ``token_lp``: per sequence ``(n_i - 1,)``, element k = log π(x_{k+1} | x_≤k) (empty list when
        ``with_token_logprobs`` is False); ``answer_lp``: per sequence ``(T_i,)``.
    """

    def rows(idx: torch.Tensor) -> torch.Tensor:
        r = idx if logits_rows is None else logits_rows[idx]
        if bool((r < 0).any()):
            raise ValueError("split_outputs: logits_rows lacks a needed position")
        return r.to(logits.device)

    tok, ans = [], []
    for i in range(layout.num_seqs):
        if with_token_logprobs:
            s, n = layout.seq_starts[i], layout.seq_lens[i]
            if logits_rows is None:  # a view: no copy of the (n, V) logits
                lg = logits[s : s + n - 1]
            else:
                lg = logits[rows(layout.trajectory_index(i)[:-1])]
            tok.append(token_logprobs(lg, sequences[i].reshape(-1)[1:]))
        pred = rows(layout.answer_predictors(i))
        a = layout.append_lens[i]
        tgt = copies[i].reshape(-1)[: a + 1].to(logits.device)
        lp = token_logprobs(logits[pred.reshape(-1)], tgt.repeat(pred.shape[0])).view(pred.shape)
        ans.append(_mean_scored(lp, score_masks[i].reshape(-1)[: a + 1].bool()))
    return tok, ans


def _check_inputs(sequences, prefix_ends, copies, score_masks) -> list[int]:
    n = len(sequences)
    if not (len(prefix_ends) == len(copies) == len(score_masks) == n):
        raise ValueError(
            f"sequences, prefix_ends, copies and score_masks must have the same length, got "
            f"{n}, {len(prefix_ends)}, {len(copies)}, {len(score_masks)}"
        )
    app = []
    for i in range(n):
        if sequences[i].dim() != 1:
            raise ValueError(f"sequences[{i}] must be 1-D, got shape {tuple(sequences[i].shape)}")
        app.append(_score_info(copies[i].reshape(-1), score_masks[i].reshape(-1), f"copies[{i}]"))
    return app


def _check_sliding_window(model: torch.nn.Module, span: int) -> None:
    """A 4-D mask replaces the model's sliding-window masks: refuse when a window would bite."""
    cfg = getattr(model, "config", None)
    sw = getattr(cfg, "sliding_window", None)
    if sw is None or not getattr(cfg, "use_sliding_window", True):
        return
    layer_types = getattr(cfg, "layer_types", None)
    if layer_types is not None and "sliding_attention" not in layer_types:
        return
    if sw < span:
        raise NotImplementedError(
            f"method 'dense': sliding_window={sw} is shorter than a sequence block ({span} positions); "
            "sliding-window attention is not supported"
        )


def packed_logprobs_with_copies(
    model: torch.nn.Module,
    sequences: Sequence[torch.Tensor],
    prefix_ends: Sequence[Sequence[int]],
    copies: Sequence[torch.Tensor],
    score_masks: Sequence[torch.Tensor],
    method: str = "vectorized",
    with_token_logprobs: bool = True,
    temperature: float = 1.0,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Token log-probs of several trajectories and their per-turn answer log-probs in ONE forward.

    The trajectories are packed into one row (position ids restarting per sequence), the T_i copies
    of each sequence's answer appended after it, and one forward gives both outputs; the copies of a
    sequence see only that sequence.

    Args:
        model: a Hugging Face causal LM (``AutoModelForCausalLM``), in eval mode.
        sequences: per trajectory, ``(n_i,)`` token ids (prompt + response).
        prefix_ends: per trajectory, ``T_i`` strictly increasing prefix lengths (t = 0: the prompt).
        copies: per trajectory, ``(G_i,)`` the wrapped answer tokens.
        score_masks: per trajectory, ``(G_i,)`` bool, True on the averaged gold-answer tokens.
        method: ``"vectorized"`` (production, no dense mask), ``"dense"`` (4-D mask reference, uses
            the model's own sdpa/eager attention) or ``"naive"`` (a forward per prefix, and a plain
            forward per sequence for the token log-probs).
        with_token_logprobs: also return the trajectories' token log-probs (skips their LM-head
            work when False).
        temperature: logits are divided by it before the log-softmax (the rollout's sampling
            temperature, so the old log-probs are those of the policy that sampled).

    Gradients follow the caller's grad mode; the recompute step calls this under ``torch.no_grad()``.
    Returns:
        ``(token_lp, answer_lp)``: ``token_lp[i]`` is ``(n_i - 1,)`` (equal to a plain forward's
        log-probs of sequence i; ``[]`` when not requested); ``answer_lp[i]`` is ``(T_i,)``, element t
        = Eq. 3 for prefix ``prefix_ends[i][t]``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    app = _check_inputs(sequences, prefix_ends, copies, score_masks)
    if method == "naive":
        return _naive(
            model, sequences, prefix_ends, copies, score_masks, app, with_token_logprobs, temperature
        )

    layout = build_copy_layout(
        [int(x.numel()) for x in sequences], prefix_ends, app, [int(c.numel()) for c in copies]
    )
    ids = pack_input_ids(layout, sequences, copies)
    keep = None
    if not with_token_logprobs:
        keep = torch.cat([layout.answer_predictors(i).reshape(-1) for i in range(layout.num_seqs)])
    dev = _model_device(model)
    pos = layout.position_ids.reshape(1, -1).to(dev)
    if method == "dense":
        _check_sliding_window(model, layout.max_span)
        dtype = next(model.parameters()).dtype
        allowed = layout.dense_mask().to(dev)
        mask = torch.zeros(allowed.shape, dtype=dtype, device=dev)
        mask.masked_fill_(~allowed, torch.finfo(dtype).min)
        logits = _logits(model, ids, keep, temperature, position_ids=pos, attention_mask=mask[None, None])
    else:
        with copy_attention_enabled(model):
            logits = _logits(
                model, ids, keep, temperature, position_ids=pos, attention_mask=None, igpo_layout=layout
            )
    rows = None
    if keep is not None:  # logits hold only the predictor rows: map packed index -> row
        rows = torch.full((layout.total_len,), -1, dtype=torch.long)
        rows[keep] = torch.arange(keep.numel())
    return split_outputs(layout, logits, sequences, copies, score_masks, with_token_logprobs, rows)


def _naive(model, sequences, prefix_ends, copies, score_masks, app, with_token_logprobs, temperature=1.0):
    tok, ans = [], []
    for i, x in enumerate(sequences):
        x = x.reshape(-1)
        n = x.numel()
        if with_token_logprobs:
            lg = _logits(model, x, None, temperature)
            tok.append(token_logprobs(lg[:-1], x[1:]))
        a = app[i]
        c = copies[i].reshape(-1)
        vals = []
        for t, p in enumerate(prefix_ends[i]):
            p = _as_int(p, f"prefix_ends[{i}][{t}]")
            if p < 1 or p > n or (t and p <= prefix_ends[i][t - 1]):
                raise ValueError(f"prefix_ends[{i}][{t}] = {p} must increase strictly and lie in [1, {n}]")
            ids = torch.cat([x[:p], c[:a].to(x.device)])
            lg = _logits(model, ids, torch.arange(p - 1, p + a), temperature)
            vals.append(token_logprobs(lg, c[: a + 1]))
        ans.append(_mean_scored(torch.stack(vals), score_masks[i].reshape(-1)[: a + 1].bool()))
    return tok, ans


def answer_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    prefix_ends: Sequence[int],
    copy_ids: torch.Tensor,
    score_mask: torch.Tensor,
    method: str = "vectorized",
) -> torch.Tensor:
    """Per-turn ground-truth log-prob of one trajectory (paper Eq. 3).

    Args:
        model: Hugging Face causal LM.
        input_ids: ``(n,)`` trajectory tokens (prompt + response).
        prefix_ends: ``T`` strictly increasing prefix lengths; the first is the prompt alone.
        copy_ids: ``(G,)`` the wrapped answer as the agent would write it.
        score_mask: ``(G,)`` bool, True on the gold-answer tokens that are averaged.
        method: ``"vectorized"`` (one forward, no dense mask), ``"dense"`` or ``"naive"``.
    Returns:
        ``(T,)``: element t = mean over scored j of log π(copy_j | input_ids[:prefix_ends[t]], copy_<j).
    """
    _, ans = packed_logprobs_with_copies(
        model, [input_ids.reshape(-1)], [list(prefix_ends)], [copy_ids], [score_mask], method, False
    )
    return ans[0]


# --------------------------------------------------------------------------------------------------
# Information gain and the Fig. 5 metric
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def information_gain(logprobs: torch.Tensor, basis: str = "logprob") -> torch.Tensor:
    """Information-gain reward of turns 1 … T-1 (paper Eq. 4; App. D.1 for ``basis="prob"``).

    Args:
        logprobs: ``(T,)`` (or ``(..., T)``) per-turn mean ground-truth log-probs ``lp_t`` (Eq. 3).
        basis: ``"logprob"``: ``IG_t = lp_t - lp_{t-1}``; ``"prob"``: ``exp(lp_t) - exp(lp_{t-1})``.
            Since ``lp_t`` is the *mean* token log-prob, ``exp(lp_t)`` is the geometric-mean token
            probability of the answer (not the joint sequence probability).
    Returns:
        ``(T - 1,)`` (or ``(..., T - 1)``), detached; empty when T = 1.
    """
    lp = logprobs.detach()
    if basis == "logprob":
        v = lp
    elif basis == "prob":
        v = lp.exp()
    else:
        raise ValueError(f"basis must be 'logprob' or 'prob', got {basis!r}")
    return v[..., 1:] - v[..., :-1]


@torch.no_grad()
def ground_truth_gain(logprobs: Sequence[torch.Tensor]) -> float:
    """Mean over trajectories with T ≥ 2 of ``lp_{T-1} - lp_0`` (paper Fig. 5); NaN if none."""
    gains = [float(lp[-1] - lp[0]) for lp in logprobs if lp.numel() >= 2]
    return sum(gains) / len(gains) if gains else math.nan


def _wrapped_answer(tokenizer, answer: str, template: str) -> tuple[str, int, int, list[int], list]:
    """``(text, start, end, ids, offsets)``: the wrapped answer, its character span and its tokens."""
    if not isinstance(template, str) or "{answer}" not in template:
        raise ValueError(f"answer_template must contain '{{answer}}', got {template!r}")
    if not isinstance(answer, str) or not answer.strip():
        raise ValueError(f"answer must be a non-empty string, got {answer!r}")
    prefix = template.partition("{answer}")[0]
    text = template.replace("{answer}", answer)
    start, end = len(prefix), len(prefix) + len(answer)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return text, start, end, list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def answer_copy(tokenizer, answer: str, template: str = ANSWER_WRAPPER) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenize the gold answer wrapped as the agent writes a final turn, and mark the answer tokens.

    Args:
        tokenizer: a Hugging Face fast tokenizer (offsets are needed to find the answer's tokens).
        answer: the gold answer text.
        template: the wrapper; ``{answer}`` is replaced by the answer (``algorithm.igpo.answer_template``,
            default :data:`igpo.prompts.ANSWER_WRAPPER`).
    Returns:
        ``(copy_ids (G,) long, score_mask (G,) bool)``: the mask is True on tokens overlapping the answer.
    """
    text, start, end, ids, offsets = _wrapped_answer(tokenizer, answer, template)
    mask = torch.tensor([s < end and e > start for s, e in offsets], dtype=torch.bool)
    if not bool(mask.any()):
        raise ValueError(f"no token of the wrapped answer covers the answer {answer!r} in {text!r}")
    return torch.tensor(ids, dtype=torch.long), mask


class AnswerTemplateError(ValueError):
    """The answer template makes a scored token hold template text (raised at start-up, before training)."""


def sample_answers(answers: Iterable[str], k: int = 1000, seed: int = 0) -> list[str]:
    """Up to ``k`` distinct answers (all of them when there are fewer), a fixed-seed sample otherwise."""
    distinct = list(dict.fromkeys(a for a in answers if isinstance(a, str) and a.strip()))
    if len(distinct) <= k:
        return distinct
    return random.Random(seed).sample(distinct, k)


def check_answer_template(
    tokenizer, template: str, answers: Iterable[str], setting: str = "answer_template"
) -> None:
    """Refuse a template under which the scored tokens are not the gold answer's own tokens.

    For each answer, the wrapped text is tokenized as :func:`answer_copy` does. A scored token (one
    overlapping the answer) may carry whitespace next to the answer (a word's leading space, a line
    break after final punctuation: that is how the agent writes the answer) but no other template
    character, such as the ``>`` a byte-level BPE merges into ``>Paris``; and the scored tokens must
    equal the tokens of that same text tokenized on its own. Raises :class:`AnswerTemplateError` (a
    ``ValueError``) naming ``setting``, the template, the answer, the offending token and what to change.
    """
    if not isinstance(template, str) or "{answer}" not in template:
        raise AnswerTemplateError(f"{setting} must contain '{{answer}}', got {template!r}")
    checked = 0
    for answer in answers:
        text, start, end, ids, offsets = _wrapped_answer(tokenizer, answer, template)
        scored = [j for j, (s, e) in enumerate(offsets) if s < end and e > start]
        if not scored:
            raise AnswerTemplateError(
                f"{setting}={template!r}: no token of the wrapped answer covers the gold answer {answer!r}"
            )
        for j in scored:
            s, e = offsets[j]
            outside = text[s:start] + text[end:e]
            if outside.strip():
                tok = tokenizer.convert_ids_to_tokens(ids[j])
                raise AnswerTemplateError(
                    f"{setting}={template!r}: for the gold answer {answer!r} the scored token {tok!r} "
                    f"(id {ids[j]}, text {text[s:e]!r}) also holds {outside.strip()!r} of the template, so the "
                    f"answer log-probability would include template text. Set {setting} to a template with a "
                    f"line break between the tags and {{answer}}, e.g. the default {ANSWER_WRAPPER!r}."
                )
        lo, hi = min(offsets[j][0] for j in scored), max(offsets[j][1] for j in scored)
        own = list(tokenizer(text[lo:hi], add_special_tokens=False)["input_ids"])
        got = [ids[j] for j in scored]
        if got != own:
            first = next(
                (i for i, (a, b) in enumerate(zip(got, own, strict=False)) if a != b), min(len(got), len(own))
            )
            bad = got[first] if first < len(got) else got[-1]
            raise AnswerTemplateError(
                f"{setting}={template!r}: for the gold answer {answer!r} the scored tokens "
                f"{tokenizer.convert_ids_to_tokens(got)} differ from the answer's own tokens "
                f"{tokenizer.convert_ids_to_tokens(own)} (first offending token "
                f"{tokenizer.convert_ids_to_tokens(bad)!r}): the template's text next to {{answer}} changes "
                f"how the answer is tokenized. Set {setting} to a template with a line break between the "
                f"tags and {{answer}}, e.g. the default {ANSWER_WRAPPER!r}."
            )
        checked += 1
    if checked == 0:
        raise AnswerTemplateError(f"{setting}={template!r}: no gold answer to check the template with")
