"""The FSDP actor engine with answer copies in the old-log-prob forward (paper Fig. 3, inside verl).

Hook point (verl 0.9.1): ``FSDPEngineWithLMHead.forward_step`` in
``verl/workers/engine/fsdp/transformer_impl.py`` runs one micro-batch: ``prepare_model_inputs``
(packs the nested sequences into one row when ``use_remove_padding``, rolls the labels, adds the
static ``pad_to_length`` pad and, under Ulysses SP, pads to a multiple of ``sp`` and slices the row
across the SP ranks), the module forward, and ``prepare_model_outputs`` (log-probs / entropy at
every packed position, all-gathered across SP and cut back into nested per-sequence tensors).

:class:`IGPOFSDPEngineWithLMHead` overrides only ``forward_step``, and only when the micro-batch
carries the non-tensor flag ``igpo_with_copies`` (set by the ``igpo`` trainer's
``_compute_old_log_prob`` and nowhere else: the reference-policy and update forwards take the
parent's path untouched). Then:

1. every sequence i of the micro-batch is replaced by ``x_i + T_i`` copies of its wrapped answer
   (:func:`igpo.verl.ig_recompute.extend_sequences`, per-row metadata ``igpo_prefix_ends``,
   ``igpo_copy_ids``, ``igpo_score_mask`` as nested tensors), position ids continuing from each
   prefix end; the parent's ``prepare_model_inputs`` packs / pads / slices that exactly as usual;
2. the forward runs with attention ``"igpo_copies"`` (:func:`igpo.info_gain.copy_attention`, the
   production path of :func:`igpo.info_gain.packed_logprobs_with_copies`) and the row's
   :class:`~igpo.info_gain.CopyLayout` as a forward kwarg. Trajectory tokens attend causally
   within their own sequence, so their logits equal the plain forward's;
3. before the parent's ``prepare_model_outputs`` (which may scale the logits in place) the answer
   log-probs are gathered at the few predictor rows only (``T_i·(a_i+1)`` rows per sequence, with
   the same temperature as the old log-probs), then all-gathered like the log-probs;
4. the parent's outputs (``log_probs``, ``entropy``, ``sum_pi_squared``) are cut back to the
   trajectory tokens, so ``old_log_probs`` and the entropy metric are what the plain forward gives;
   the new output ``igpo_answer_lp`` (nested, ``(T_i,)`` per row) and ``igpo_ig_time_s`` (nested,
   ``(1,)`` per row: this micro-batch's IG-specific wall time split evenly over its rows) travel
   back to TransferQueue with them (``tqbridge`` writes every ``model_output`` field).

Ulysses SP (``ulysses_sequence_parallel_size > 1``): verl's SP for text models is a patch of
``transformers.integrations.flash_attention._flash_attention_forward`` (all-to-all around flash
attention, ``verl/models/transformers/monkey_patch.py``); switching the attention implementation
bypasses it, so the copies' attention does the same all-to-all itself
(:func:`ulysses_copy_attention`: gather the sequence / scatter the heads, run
:func:`~igpo.info_gain.copy_attention` on the full padded row with ``H/sp`` heads, scatter back). The
layout covers verl's tail padding as one extra copy-less dummy sequence. The packed row is padded
and sliced by verl's own code, so SP stays one forward over sequence shards, no full-sequence
gather of activations.

Not supported (clear error): ``use_remove_padding=false``, ``use_fused_kernels`` (no logits),
multi-modal inputs, 3-D (mrope) position ids, sliding-window attention narrower than a block.

Registration: importing this module replaces verl's ``language_model`` engine for backends
``fsdp``/``fsdp2`` (``EngineRegistry``, ``verl/workers/engine/base.py``) with the subclass. The
workers import it through ``actor_rollout_ref.model.external_lib: igpo.verl.engine``
(``HFModelConfig.__post_init__`` → ``import_external_libs``, ``verl/workers/config/model.py``),
which runs before ``TrainingWorker`` builds its engine.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextlib import nullcontext
from typing import Any

import torch
from tensordict import TensorDict
from verl.utils import tensordict_utils as tu
from verl.workers.engine.base import EngineRegistry
from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead

from igpo.info_gain import CopyLayout, copy_attention, register_copy_attention, token_logprobs
from igpo.verl.ig_recompute import (
    answer_logprobs_from_rows,
    answer_targets,
    copy_token_counts,
    extend_sequences,
    trajectory_values,
)

__all__ = [
    "IG_FLAG",
    "IG_INPUT_FIELDS",
    "IGPOFSDPEngineWithLMHead",
    "copies_attention",
    "install",
    "ulysses_copy_attention",
]

#: Non-tensor flag of a micro-batch that asks for the answer copies.
IG_FLAG = "igpo_with_copies"
#: Nested per-row inputs the trainer writes before the old-log-prob recompute.
IG_INPUT_FIELDS = ("igpo_prefix_ends", "igpo_copy_ids", "igpo_score_mask")
#: Attention implementation name of the Ulysses-SP variant.
ULYSSES_ATTN = "igpo_copies_ulysses"
_PASSTHROUGH_OUTPUTS = ("log_probs", "entropy", "sum_pi_squared")


def ulysses_copy_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    igpo_layout: CopyLayout | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """:func:`~igpo.info_gain.copy_attention` under Ulysses SP (verl's all-to-all, then the copies' mask).

    Args:
        query: ``(1, H, N/sp, D)``; key, value: ``(1, H_kv, N/sp, D)`` (this rank's sequence shard).
        igpo_layout: layout of the *global* padded row (length N).
    Returns:
        ``((1, N/sp, H, D), None)``.
    Mirrors ``_ulysses_flash_attention_forward`` (``verl/models/transformers/monkey_patch.py``):
    KV heads are repeated up to ``sp`` when there are fewer, then sequence-gather / head-scatter.
    """
    from verl.models.transformers.monkey_patch import repeat_kv
    from verl.utils.ulysses import (
        gather_heads_scatter_seq,
        gather_seq_scatter_heads,
        get_ulysses_sequence_parallel_world_size,
    )

    sp = get_ulysses_sequence_parallel_world_size()
    q, k, v = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)  # (1, N/sp, h, D)
    if sp > 1:
        rep = max(sp // k.size(2), 1)
        k, v = repeat_kv(k, rep), repeat_kv(v, rep)
        q = gather_seq_scatter_heads(q, seq_dim=1, head_dim=2)
        k = gather_seq_scatter_heads(k, seq_dim=1, head_dim=2)
        v = gather_seq_scatter_heads(v, seq_dim=1, head_dim=2)
    out, _ = copy_attention(
        module,
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        attention_mask,
        dropout,
        scaling,
        igpo_layout=igpo_layout,
        **kwargs,
    )  # (1, N, h/sp, D)
    if sp > 1:
        out = gather_heads_scatter_seq(out, seq_dim=1, head_dim=2)
    return out, None


@contextlib.contextmanager
def copies_attention(model: torch.nn.Module, ulysses: bool) -> Iterator[None]:
    """Switch every config of ``model`` (FSDP-wrapped or not) to the copies' attention, then restore."""
    from transformers import AttentionInterface

    register_copy_attention()
    AttentionInterface.register(ULYSSES_ATTN, ulysses_copy_attention)
    name = ULYSSES_ATTN if ulysses else "igpo_copies"
    cfgs: dict[int, Any] = {}
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation"):
            cfgs.setdefault(id(cfg), cfg)
    old = {k: c._attn_implementation for k, c in cfgs.items()}
    try:
        for c in cfgs.values():
            c._attn_implementation = name
        yield
    finally:
        for k, c in cfgs.items():
            c._attn_implementation = old[k]


def _nested(parts: list[torch.Tensor]) -> torch.Tensor:
    return torch.nested.as_nested_tensor(parts, layout=torch.jagged)


def _rows(nt: Any) -> list[torch.Tensor]:
    """Per-row tensors of a nested tensor (or a list / padded tensor)."""
    if isinstance(nt, torch.Tensor) and nt.is_nested:
        return list(nt.unbind())
    return [t.reshape(-1) for t in nt]


_BATCHING_KEYS = ("use_dynamic_bsz", "sp_size", "force_group_size", "max_token_len_per_gpu")


def micro_batches_counting_copies(data: TensorDict, prepare: Any = None, **kwargs: Any) -> tuple[list, Any]:
    """verl's ``prepare_micro_batches`` with every row weighed by its length *plus* its answer copies.

    verl's dynamic micro-batching (``use_dynamic_bsz``, ``rearrange_micro_batches``) keeps each
    micro-batch's token sum within ``max_token_len_per_gpu x sp`` using the un-extended lengths; the
    copies then add ``T_i · a_i`` tokens per row (:func:`igpo.verl.ig_recompute.copy_token_counts`).
    So verl partitions a stand-in batch whose rows have the extended lengths, and the real rows are
    taken by its indices: the budget holds for what the forward really runs. Without dynamic batching
    or without the IG fields this is verl's function unchanged.
    """
    if prepare is None:
        from verl.workers.engine.utils import prepare_micro_batches as prepare
    dynamic = tu.get_non_tensor_data(data=data, key="use_dynamic_bsz", default=True)
    if not dynamic or any(f not in data.keys() for f in IG_INPUT_FIELDS):
        return prepare(data=data, **kwargs)
    pes = [r.tolist() for r in _rows(data["igpo_prefix_ends"])]
    copies = copy_token_counts(pes, [r.bool() for r in _rows(data["igpo_score_mask"])])
    lens = [int(r.numel()) + c for r, c in zip(_rows(data["input_ids"]), copies, strict=True)]
    proxy = TensorDict(
        {"input_ids": _nested([torch.zeros(n, dtype=torch.long) for n in lens])}, batch_size=[len(lens)]
    )
    for key in _BATCHING_KEYS:
        if key in data.keys():
            tu.assign_non_tensor(proxy, **{key: tu.get_non_tensor_data(data=data, key=key, default=None)})
    _, indices = prepare(data=proxy, **kwargs)
    return [tu.index_select_tensor_dict(data, list(part)) for part in indices], indices


@contextlib.contextmanager
def copy_aware_micro_batching() -> Iterator[None]:
    """Within the block, the FSDP engine's micro-batching counts the answer copies' tokens."""
    import verl.workers.engine.fsdp.transformer_impl as impl

    original = impl.prepare_micro_batches
    impl.prepare_micro_batches = lambda data, **kw: micro_batches_counting_copies(
        data, prepare=original, **kw
    )
    try:
        yield
    finally:
        impl.prepare_micro_batches = original


class IGPOFSDPEngineWithLMHead(FSDPEngineWithLMHead):
    """verl's FSDP LM engine whose old-log-prob forward also yields the per-turn answer log-probs."""

    def forward_backward_batch(self, data: TensorDict, loss_function: Any, forward_only: bool = False):
        if not tu.get_non_tensor_data(data=data, key=IG_FLAG, default=False):
            return super().forward_backward_batch(data, loss_function, forward_only)
        with copy_aware_micro_batching():  # micro-batch token budgets include the copies
            return super().forward_backward_batch(data, loss_function, forward_only)

    def forward_step(self, micro_batch: TensorDict, loss_function: Any, forward_only: bool):
        if not tu.get_non_tensor_data(data=micro_batch, key=IG_FLAG, default=False):
            return super().forward_step(micro_batch, loss_function, forward_only)
        return self._forward_step_with_copies(micro_batch, loss_function, forward_only)

    # -- the pieces, separately callable (the CPU tests drive them with a plain HF module) --------

    def _check_ig_supported(self, micro_batch: TensorDict, forward_only: bool) -> None:
        problems = []
        if not forward_only:
            problems.append("only the forward-only old-log-prob pass may carry answer copies")
        if not tu.get_non_tensor_data(data=micro_batch, key="use_remove_padding", default=True):
            problems.append("actor_rollout_ref.model.use_remove_padding must be true")
        if tu.get_non_tensor_data(data=micro_batch, key="use_fused_kernels", default=False):
            problems.append(
                "actor_rollout_ref.model.use_fused_kernels must be false (the copies need logits)"
            )
        if micro_batch.get("multi_modal_inputs", None) is not None and len(micro_batch["multi_modal_inputs"]):
            mm = micro_batch["multi_modal_inputs"]
            if any(bool(x) for x in (mm.tolist() if hasattr(mm, "tolist") else mm)):
                problems.append("multi-modal inputs are not supported")
        if micro_batch["position_ids"].dim() == 3:
            problems.append("3-D (mrope) position ids are not supported")
        missing = [f for f in IG_INPUT_FIELDS if f not in micro_batch.keys()]
        if missing:
            problems.append(f"micro-batch lacks {missing} (written by the igpo trainer)")
        if problems:
            raise NotImplementedError(
                "igpo answer copies in the old-log-prob forward: " + "; ".join(problems)
            )

    def extend_micro_batch(self, micro_batch: TensorDict) -> tuple[TensorDict, dict[str, Any]]:
        """Replace every sequence by sequence + answer copies; return it and what splitting needs."""
        seqs = _rows(micro_batch["input_ids"])
        pes = [[int(v) for v in r.tolist()] for r in _rows(micro_batch["igpo_prefix_ends"])]
        cids = [r.long() for r in _rows(micro_batch["igpo_copy_ids"])]
        masks = [r.bool() for r in _rows(micro_batch["igpo_score_mask"])]
        layout, ext_ids, ext_pos = extend_sequences(seqs, pes, cids, masks)
        ext = micro_batch.clone(recurse=False)
        ext["input_ids"] = _nested(ext_ids)
        ext["position_ids"] = _nested([p.to(micro_batch["position_ids"].dtype) for p in ext_pos])
        info = {"seqs": seqs, "prefix_ends": pes, "copy_ids": cids, "score_masks": masks, "layout": layout}
        return ext, info

    def answer_row_logprobs(
        self,
        logits: torch.Tensor,
        output_args: dict[str, Any],
        layout: CopyLayout,
        copy_ids: list[torch.Tensor],
    ) -> torch.Tensor:
        """``(N,)`` log-prob of each predictor row's answer token (0 elsewhere), global packed coords.

        ``logits``: ``(1, N_local, V)`` this rank's (sequence-sharded under SP) raw logits.
        """
        lg = logits.squeeze(0)
        if hasattr(lg, "full_tensor"):  # DTensor (TP-sharded vocab)
            lg = lg.full_tensor()
        pad = int(output_args.get("pad_size", 0))
        tgt = answer_targets(layout, copy_ids)  # (N_global_padded,) when the layout includes the pad
        n_local = lg.shape[0]
        start = 0
        if getattr(self, "use_ulysses_sp", False):
            from verl.utils.ulysses import get_ulysses_sequence_parallel_rank

            start = get_ulysses_sequence_parallel_rank() * n_local
        tgt_local = tgt[start : start + n_local].to(lg.device)
        rows = (tgt_local >= 0).nonzero().reshape(-1)
        out = torch.zeros(n_local, dtype=torch.float32, device=lg.device)
        if rows.numel():
            sel = lg[rows].float()
            temp = output_args.get("temperature_rmpad")
            if temp is not None and not output_args.get("temperature_is_one", False):
                sel = sel / temp.reshape(-1)[rows].to(sel.device, sel.dtype).unsqueeze(-1)
            out[rows] = token_logprobs(sel, tgt_local[rows]).float()
        if getattr(self, "use_ulysses_sp", False) or pad:
            out = self._gather_and_unpad_packed(out, pad)
        return out

    def restore_outputs(
        self, model_output: dict[str, Any], info: dict[str, Any], answer_rows: torch.Tensor
    ) -> dict[str, Any]:
        """Cut the parent's per-token outputs back to the trajectories; add ``igpo_answer_lp``."""
        layout: CopyLayout = info["layout"]
        bs = len(info["seqs"])
        out = dict(model_output)
        for key in _PASSTHROUGH_OUTPUTS:
            if key in out and out[key] is not None:
                vals = out[key].values() if out[key].is_nested else out[key]
                out[key] = _nested(trajectory_values(layout, vals, bs))
        lp = answer_logprobs_from_rows(layout, answer_rows, info["score_masks"][:bs])
        out["igpo_answer_lp"] = _nested([x.float().reshape(-1) for x in lp])
        return out

    def _forward_step_with_copies(self, micro_batch: TensorDict, loss_function: Any, forward_only: bool):
        from verl.utils.device import get_device_id, get_device_name

        self._check_ig_supported(micro_batch, forward_only)
        micro_batch = micro_batch.to(get_device_id())
        t0 = time.perf_counter()
        ext, info = self.extend_micro_batch(micro_batch)
        t_prep = time.perf_counter() - t0
        model_inputs, output_args = self.prepare_model_inputs(micro_batch=ext)
        pad = int(output_args.get("pad_size", 0))
        t0 = time.perf_counter()
        if pad:  # verl's tail pad becomes one copy-less dummy sequence of the layout
            layout, _, _ = extend_sequences(
                info["seqs"], info["prefix_ends"], info["copy_ids"], info["score_masks"], pad_len=pad
            )
            info["layout"] = layout
        model_inputs["igpo_layout"] = info["layout"]
        t_prep += time.perf_counter() - t0

        autocast_dtype = getattr(self, "_autocast_dtype", torch.bfloat16)
        autocast_ctx = (
            nullcontext()
            if autocast_dtype == torch.float32
            else torch.autocast(device_type=get_device_name(), dtype=autocast_dtype)
        )
        with (
            autocast_ctx,
            copies_attention(self.module, ulysses=bool(getattr(self, "use_ulysses_sp", False))),
        ):
            raw_output = self.module(**model_inputs, use_cache=False)
            t0 = time.perf_counter()
            answer_rows = self.answer_row_logprobs(
                raw_output.logits, output_args, info["layout"], info["copy_ids"]
            )
            t_ans = time.perf_counter() - t0
            model_output = self.prepare_model_outputs(
                output=raw_output,
                output_args=output_args,
                micro_batch=ext,
                logits_processor_func=loss_function,
            )
        t0 = time.perf_counter()
        model_output = self.restore_outputs(model_output, info, answer_rows)
        dt = t_prep + t_ans + time.perf_counter() - t0
        bs = len(info["seqs"])
        model_output["igpo_ig_time_s"] = _nested([torch.full((1,), dt / bs) for _ in range(bs)])
        output = {
            "model_output": {
                k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in model_output.items()
            },
            "loss": 1.0,
            "metrics": {},
        }
        return torch.tensor(1.0), output


def install() -> None:
    """Make :class:`IGPOFSDPEngineWithLMHead` verl's ``language_model`` engine for fsdp/fsdp2 (idempotent).

    ``EngineRegistry.register`` refuses a taken key, so the registry entries that hold verl's own
    ``FSDPEngineWithLMHead`` are replaced in place; entries registered by someone else are left.
    """
    table = EngineRegistry._engines.get("language_model", {})
    for backend in ("fsdp", "fsdp2"):
        for key, cls in list(table.get(backend, {}).items()):
            if cls is FSDPEngineWithLMHead:
                table[backend][key] = IGPOFSDPEngineWithLMHead


install()
