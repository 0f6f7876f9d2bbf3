"""Information gain inside verl's old-log-prob recompute: the pure part (no Ray, no GPU, no verl state).

The paper computes the per-turn ground-truth log-probs (Eq. 3) in the same forward as the old
log-probs (Fig. 3): each trajectory gets its T wrapped-answer copies appended. In verl 0.9.1 that
forward is ``FSDPEngineWithLMHead.forward_step`` (``verl/workers/engine/fsdp/transformer_impl.py``),
reached from ``PPOTrainer._compute_old_log_prob`` (``verl/trainer/ppo/v1/trainer_base.py``) →
``ActorRolloutRefWorker.compute_log_prob`` (``verl/workers/engine_workers.py``) →
``TrainingWorker.infer_batch`` → ``FSDPEngine.forward_backward_batch``. Inputs arrive there as
nested (jagged) tensors: sequence i of a micro-batch is ``input_ids[i] = prompt_i + response_i``
with no padding at all (``agent_loop_tq.AgentLoopWorkerTQ._agent_loop_postprocess`` stores each
rollout unpadded), and with ``use_remove_padding`` the engine packs them by concatenation (position
ids restart per sequence). This module holds everything around that forward that can be a pure
function:

* :func:`ig_request` — driver side: per-row prefix ends (full-sequence coordinates), answer copies
  and score masks from prompt/response lengths and the agent loop's ``extra_fields``;
  :func:`dataset_answers` — driver side: the scored gold answers of a sample of training rows, for
  the start-up check of the answer template (:func:`igpo.info_gain.check_answer_template`);
* :func:`extend_sequences` — engine side: each sequence followed by its copies (exactly the packed
  row :func:`igpo.info_gain.packed_logprobs_with_copies` builds), its position ids and the
  :class:`igpo.info_gain.CopyLayout`; :func:`answer_targets` gives the label of every answer
  predictor row;
* :func:`trajectory_values` / :func:`answer_logprobs_from_rows` — split the packed outputs back;
* :func:`old_log_probs_from_sequences` — per-sequence token log-probs → verl's ``old_log_probs``
  ``(bs, response_len)`` (what ``verl.workers.utils.padding.response_from_nested`` + padding give);
* :func:`sequences_from_padded` — the left-padded-prompt / right-padded-response layout of verl's
  padded ``DataProto`` (``prompts``, ``responses``, ``attention_mask``) → unpadded sequences;
* :func:`ig_to_token_rewards` (from :mod:`igpo.advantage`, re-exported) — IG onto ``token_level_rewards``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from igpo.advantage import ig_to_token_rewards  # the contract's encoder lives with its decoder
from igpo.answer import as_gold_list
from igpo.info_gain import CopyLayout, answer_copy, build_copy_layout, information_gain, pack_input_ids
from igpo.turns import prefix_ends_from_turn_ends

__all__ = [
    "IGRequest",
    "answer_logprobs_from_rows",
    "answer_targets",
    "dataset_answers",
    "extend_sequences",
    "ig_request",
    "ig_to_token_rewards",
    "information_gains",
    "old_log_probs_from_sequences",
    "sequences_from_padded",
    "trajectory_values",
]


# --------------------------------------------------------------------------------------------------
# Driver side: what the engine needs per row
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IGRequest:
    """Per-row inputs of the IG part of the recompute (lists of length bs).

    Attributes:
        prefix_ends: ``T_i`` strictly increasing prefix lengths of ``prompt + response`` (t = 0: prompt).
        copy_ids: ``(G_i,)`` long, the wrapped gold answer.
        score_mask: ``(G_i,)`` bool, True on the averaged gold-answer tokens.
        active: False for rows that carry no IG (verl's synthetic padding rows, rows without a gold
            answer); they still get one dummy copy so every row has the same structure.
    """

    prefix_ends: list[list[int]]
    copy_ids: list[torch.Tensor]
    score_mask: list[torch.Tensor]
    active: list[bool]


def _field(extra: Any, key: str, default: Any = None) -> Any:
    if extra is None:
        return default
    if isinstance(extra, Mapping):
        return extra.get(key, default)
    return getattr(extra, key, default)


def ig_request(
    prompt_lens: Sequence[int],
    response_lens: Sequence[int],
    extra_fields: Sequence[Any],
    tokenizer: Any,
    template: str,
    is_padding: Sequence[bool] | None = None,
    dummy_token_id: int = 0,
) -> IGRequest:
    """Build the per-row prefix ends, answer copies and score masks.

    Args:
        prompt_lens, response_lens: per row (unpadded lengths).
        extra_fields: per row, the agent loop's ``extra_fields`` dict (``tool_turn_ends`` in response
            coordinates, ``ground_truth`` a list of gold aliases; the first alias is scored).
        tokenizer: a Hugging Face fast tokenizer (the actor's).
        template: ``algorithm.igpo.answer_template``.
        is_padding: per row, True for verl's synthetic padding rows (``tag["is_padding"]``).
        dummy_token_id: token of the one-token dummy copy of an inactive row.
    Returns:
        An :class:`IGRequest`. A real row without ``tool_turn_ends``/``ground_truth`` raises a
        ``ValueError`` naming the row (the ``igpo_search`` agent loop always writes them).
    """
    bs = len(prompt_lens)
    if not (len(response_lens) == len(extra_fields) == bs):
        raise ValueError(
            f"prompt_lens, response_lens, extra_fields must have equal lengths, got "
            f"{bs}, {len(response_lens)}, {len(extra_fields)}"
        )
    pad = list(is_padding) if is_padding is not None else [False] * bs
    cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    pes, cids, masks, active = [], [], [], []
    for i in range(bs):
        p, r = int(prompt_lens[i]), int(response_lens[i])
        ex = extra_fields[i]
        if pad[i]:
            pes.append([max(p, 1)])
            cids.append(torch.tensor([dummy_token_id], dtype=torch.long))
            masks.append(torch.tensor([True]))
            active.append(False)
            continue
        ends = _field(ex, "tool_turn_ends")
        golds = _field(ex, "ground_truth")
        if ends is None or golds is None:
            raise ValueError(
                f"row {i}: extra_fields lacks 'tool_turn_ends' or 'ground_truth' (got keys "
                f"{sorted(ex) if isinstance(ex, Mapping) else type(ex).__name__}); ig_source=recompute needs "
                "the igpo_search agent loop (or set algorithm.igpo.ig_source=none)"
            )
        if isinstance(golds, str):
            golds = [golds]
        golds = [str(g) for g in list(golds) if str(g).strip()]
        if not golds:
            raise ValueError(f"row {i}: ground_truth is empty; cannot score the answer copies")
        try:
            pe = prefix_ends_from_turn_ends(p, [int(e) for e in ends], r)
        except ValueError as err:
            raise ValueError(f"row {i}: {err}") from None
        if p < 1:
            raise ValueError(f"row {i}: empty prompt (prompt length {p}); the t = 0 prefix needs a token")
        if golds[0] not in cache:
            cache[golds[0]] = answer_copy(tokenizer, golds[0], template)
        c, m = cache[golds[0]]
        pes.append(pe)
        cids.append(c)
        masks.append(m)
        active.append(True)
    return IGRequest(prefix_ends=pes, copy_ids=cids, score_mask=masks, active=active)


def dataset_answers(dataset: Any, k: int = 1000, seed: int = 0) -> list[str]:
    """The scored gold answer (first alias of ``reward_model.ground_truth``) of up to ``k`` rows.

    ``dataset`` is verl's RL dataset (its ``dataframe``) or any sequence of row dicts; more than ``k``
    rows are sampled with a fixed seed. A row without a ground truth raises ``ValueError`` naming it.
    """
    rows = getattr(dataset, "dataframe", dataset)
    n = len(rows)
    idx = list(range(n)) if n <= k else sorted(random.Random(seed).sample(range(n), k))
    answers = []
    for i in idx:
        rm = rows[i].get("reward_model") if isinstance(rows[i], Mapping) else None
        gt = rm.get("ground_truth") if isinstance(rm, Mapping) else None
        if gt is None:
            raise ValueError(
                f"train row {i}: no reward_model.ground_truth (reward_model={rm!r}); "
                "build the data with scripts/prepare_data.py"
            )
        answers.append(as_gold_list(gt)[0])
    return answers


# --------------------------------------------------------------------------------------------------
# Engine side: extended sequences and splitting
# --------------------------------------------------------------------------------------------------


def _append_len(score_mask: torch.Tensor, row: int) -> int:
    nz = score_mask.reshape(-1).bool().nonzero().reshape(-1)
    if nz.numel() == 0:
        raise ValueError(f"row {row}: score_mask selects no token")
    return int(nz[-1])


def copy_token_counts(prefix_ends: Sequence[Sequence[int]], score_masks: Sequence[torch.Tensor]) -> list[int]:
    """Tokens each row's answer copies add to the old-log-prob forward: ``T_i · a_i`` (T_i copies, each
    fed up to its last scored token, which is only predicted, as :func:`extend_sequences` appends them)."""
    return [
        len(pe) * _append_len(m, i) for i, (pe, m) in enumerate(zip(prefix_ends, score_masks, strict=True))
    ]


def extend_sequences(
    sequences: Sequence[torch.Tensor],
    prefix_ends: Sequence[Sequence[int]],
    copy_ids: Sequence[torch.Tensor],
    score_masks: Sequence[torch.Tensor],
    pad_len: int = 0,
) -> tuple[CopyLayout, list[torch.Tensor], list[torch.Tensor]]:
    """Each sequence followed by its T_i answer copies (Fig. 3), as separate blocks.

    Concatenating the returned blocks gives exactly :func:`igpo.info_gain.pack_input_ids` of the
    layout (what ``packed_logprobs_with_copies`` feeds the model), so verl's remove-padding packing
    of the blocks (``input_ids.values()``) is that packed row.

    Args:
        sequences: per row ``(n_i,)`` token ids (prompt + response, unpadded).
        prefix_ends, copy_ids, score_masks: as in :class:`IGRequest`.
        pad_len: if > 0, one trailing dummy sequence of this length (no copies) is added to the
            *layout* only, for the tail padding verl appends to the packed row (Ulysses SP alignment,
            ``pad_to_length`` buckets); its tokens are not in the returned blocks.
    Returns:
        ``(layout, ext_ids, ext_pos)``: the :class:`~igpo.info_gain.CopyLayout` of the packed row,
        and per row the extended ids ``(n_i + T_i·a_i,)`` and position ids (copy t continues at p_t).
    """
    bs = len(sequences)
    if not (len(prefix_ends) == len(copy_ids) == len(score_masks) == bs):
        raise ValueError(
            f"sequences, prefix_ends, copy_ids, score_masks must have equal lengths, got "
            f"{bs}, {len(prefix_ends)}, {len(copy_ids)}, {len(score_masks)}"
        )
    seqs = [s.reshape(-1) for s in sequences]
    app = [_append_len(m, i) for i, m in enumerate(score_masks)]
    lens = [int(s.numel()) for s in seqs]
    pes = [list(map(int, p)) for p in prefix_ends]
    gl = [int(c.numel()) for c in copy_ids]
    if pad_len > 0:
        layout = build_copy_layout(lens + [pad_len], pes + [[pad_len]], app + [0], gl + [1])
    else:
        layout = build_copy_layout(lens, pes, app, gl)
    packed = pack_input_ids(
        layout,
        seqs + ([torch.zeros(pad_len, dtype=torch.long)] if pad_len > 0 else []),
        list(copy_ids) + ([torch.zeros(1, dtype=torch.long)] if pad_len > 0 else []),
    )
    ext_ids, ext_pos = [], []
    for i in range(bs):
        s, e = layout.seq_starts[i], layout.seq_starts[i] + layout.block_len(i)
        ext_ids.append(packed[s:e].to(seqs[i].device))
        ext_pos.append(layout.position_ids[s:e].to(seqs[i].device))
    return layout, ext_ids, ext_pos


def answer_targets(layout: CopyLayout, copy_ids: Sequence[torch.Tensor]) -> torch.Tensor:
    """``(N,)`` long over the packed row: the answer token each predictor row must score, -1 elsewhere.

    Predictor rows of copy t of sequence i (:meth:`CopyLayout.answer_predictors`): the last prefix
    token ``x[p_t − 1]`` predicts ``c_0``, copy token ``c_j`` predicts ``c_{j+1}``. Every row
    predicts at most one answer token (the p_t are distinct), so one gather per row suffices; the
    trajectory row ``x[p_t − 1]`` additionally keeps its ordinary label for the old log-probs.
    """
    tgt = torch.full((layout.total_len,), -1, dtype=torch.long)
    for i, c in enumerate(copy_ids):
        pred = layout.answer_predictors(i)
        a = layout.append_lens[i]
        tgt[pred.reshape(-1)] = c.reshape(-1)[: a + 1].cpu().repeat(pred.shape[0])
    return tgt


def answer_logprobs_from_rows(
    layout: CopyLayout, row_logprobs: torch.Tensor, score_masks: Sequence[torch.Tensor]
) -> list[torch.Tensor]:
    """Per-row ``(T_i,)`` mean answer log-prob (Eq. 3) from the scored rows of the packed output.

    Args:
        row_logprobs: ``(N,)``, at every predictor row the log-prob of its :func:`answer_targets`
            label (other entries are ignored).
        score_masks: per row ``(G_i,)``.
    """
    out = []
    for i, m in enumerate(score_masks):
        pred = layout.answer_predictors(i).to(row_logprobs.device)
        a = layout.append_lens[i]
        w = m.reshape(-1)[: a + 1].to(row_logprobs.device, row_logprobs.dtype)
        out.append((row_logprobs[pred] * w).sum(-1) / w.sum())
    return out


def trajectory_values(
    layout: CopyLayout, values: torch.Tensor, num_rows: int | None = None
) -> list[torch.Tensor]:
    """Per row, the ``(n_i,)`` entries of a packed per-token output that belong to the trajectory.

    ``values``: ``(N, ...)`` over the packed row (e.g. verl's rolled-label log-probs or entropy).
    Entry ``k < n_i − 1`` equals a plain forward's (the copies are invisible to trajectory tokens);
    the last entry's label differs (next block instead of the next sequence), and verl never reads
    it (``response_from_nested`` takes ``[offset − resp_len − 1, offset − 1)``).
    """
    n = layout.num_seqs if num_rows is None else num_rows
    return [values[layout.seq_starts[i] : layout.seq_starts[i] + layout.seq_lens[i]] for i in range(n)]


def old_log_probs_from_sequences(
    token_logprobs: Sequence[torch.Tensor],
    prompt_lens: Sequence[int],
    response_lens: Sequence[int],
    response_width: int | None = None,
) -> torch.Tensor:
    """verl's ``old_log_probs`` ``(bs, response_width)`` from per-sequence token log-probs.

    Args:
        token_logprobs: per row ``(n_i − 1,)`` (element k = log π(x_{k+1} | x_≤k), as
            :func:`igpo.info_gain.packed_logprobs_with_copies` returns) or ``(n_i,)`` (verl's
            rolled-label layout, last entry unused).
        prompt_lens, response_lens: per row.
        response_width: padded width (default: the longest response). Right-padded with 0.
    Returns:
        ``out[b, k] = log π(response_b[k] | prompt_b, response_b[:k])``, 0 past the response.
    """
    width = max((int(r) for r in response_lens), default=0) if response_width is None else int(response_width)
    dtype = token_logprobs[0].dtype if len(token_logprobs) else torch.float32
    out = torch.zeros(len(token_logprobs), width, dtype=dtype)
    for b, (lp, p, r) in enumerate(zip(token_logprobs, prompt_lens, response_lens, strict=True)):
        p, r = int(p), int(r)
        if lp.numel() < p + r - 1:
            raise ValueError(f"row {b}: {lp.numel()} token log-probs for prompt {p} + response {r}")
        out[b, :r] = lp[p - 1 : p - 1 + r].to(out.device, dtype)
    return out


def sequences_from_padded(
    prompts: torch.Tensor, responses: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[list[torch.Tensor], list[int], list[int]]:
    """Unpadded ``prompt + response`` sequences from verl's padded layout.

    verl's padded ``DataProto`` (V0 ``RayPPOTrainer``, ``agent_loop._InternalAgentLoopOutput``)
    left-pads prompts and right-pads responses: ``attention_mask`` is ``(bs, P + R)``, 1 on real
    tokens. Args: ``prompts (bs, P)``, ``responses (bs, R)``, ``attention_mask (bs, P + R)``.
    Returns ``(sequences, prompt_lens, response_lens)``.
    """
    p_w = prompts.shape[1]
    if attention_mask.shape != (prompts.shape[0], p_w + responses.shape[1]):
        raise ValueError(
            f"attention_mask must be (bs, P + R) = {(prompts.shape[0], p_w + responses.shape[1])}, "
            f"got {tuple(attention_mask.shape)}"
        )
    am = attention_mask.bool()
    seqs, pl, rl = [], [], []
    for b in range(prompts.shape[0]):
        pm, rm = am[b, :p_w], am[b, p_w:]
        seqs.append(torch.cat([prompts[b][pm], responses[b][rm]]))
        pl.append(int(pm.sum()))
        rl.append(int(rm.sum()))
    return seqs, pl, rl


# --------------------------------------------------------------------------------------------------
# IG → token_level_rewards
# --------------------------------------------------------------------------------------------------


def information_gains(answer_lp: Sequence[torch.Tensor], basis: str = "logprob") -> list[torch.Tensor]:
    """Per row ``(T_i − 1,)`` IG (Eq. 4) from ``(T_i,)`` per-turn answer log-probs."""
    return [information_gain(lp.reshape(-1).double(), basis) for lp in answer_lp]
