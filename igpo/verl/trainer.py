"""verl's V1 sync trainer plus IG in the old-log-prob recompute (``trainer.v1.trainer_mode: sync``).

:func:`install_trainer` registers :class:`IGPOTrainer` as verl's ``sync`` trainer in the process that
builds the trainer (our Ray task runner, ``igpo/verl/main.py``). The mode *name* must stay ``sync``:
verl keys its semantics on it (``trainer_base.py``: any other name gets ``ReplayBufferAsync``, which
evicts and refills failed groups forever, a forced ``gen_batch_size=1`` and TransferQueue state in
every checkpoint). So IGPO runs exactly verl's sync loop, with only the two steps below replaced.

verl 0.9.1's ``PPOTrainer._step_once`` (``verl/trainer/ppo/v1/trainer_base.py``) runs, per step:
reward → ``_balance_batch`` (may append synthetic padding rows, ``tag["is_padding"]``) →
``_compute_old_log_prob`` → ``_compute_ref_log_prob`` → ``_compute_advantage`` → ``_update_actor``,
with every per-sample field in TransferQueue (``tq.kv_batch_get`` / ``kv_batch_put`` by key). The
agent loop's ``extra_fields`` dict is one such field per sample
(``agent_loop_tq.AgentLoopWorkerTQ._agent_loop_postprocess`` stores ``output.as_dict()``).

:class:`IGPOTrainer` overrides two steps of the pipeline (and wraps ``_step_once`` for a clear
message when every rollout failed, ``_init_dataloader`` for the answer-template check):

* ``_compute_old_log_prob``: builds the per-row prefix ends / answer copies
  (:func:`igpo.verl.ig_recompute.ig_request`), writes them as nested fields, sets the micro-batch flag
  ``igpo_with_copies`` for this call only (removed again before the reference forward), and lets
  verl's own recompute run; the engine (:mod:`igpo.verl.engine`) returns ``igpo_answer_lp`` next to
  ``log_probs``. Nothing else changes: ``old_log_probs`` and entropy are written as verl writes them.
* ``_compute_advantage``: turns the answer log-probs into IG, puts IG + outcome as ``rm_scores``
  just for verl's own ``_compute_advantage`` (so the registered ``igpo`` estimator receives them as
  ``token_level_rewards``), then restores the outcome-only ``rm_scores`` and stores the combined
  tensor as ``token_level_rewards``: verl's reported ``critic/score`` stays the outcome F1 reward,
  ``critic/rewards`` shows outcome + IG. It also computes the step's ``igpo/…`` metrics.

``algorithm.igpo.ig_source: none`` skips the copies and the IG: plain GRPO (with
``reward_mode: f1``) through the same code, metrics included.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import transfer_queue as tq
from tensordict import TensorDict
from transfer_queue import KVBatchMeta
from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

from igpo.info_gain import check_answer_template
from igpo.verl.engine import IG_FLAG
from igpo.verl.estimator import igpo_settings
from igpo.verl.ig_metrics import ig_time_share, igpo_step_metrics, rewards_with_ig
from igpo.verl.ig_recompute import copy_token_counts, dataset_answers, ig_request

__all__ = ["IGPOTrainer", "TRAINER_MODE", "ig_input_fields", "install_trainer", "padded", "to_list"]

#: The only V1 trainer mode IGPO runs under (see the module docstring).
TRAINER_MODE = "sync"


def to_list(x: Any) -> list:
    """A TransferQueue non-tensor column (NonTensorStack, LinkedList, numpy array, list) as a list."""
    if hasattr(x, "tolist"):
        return list(x.tolist())
    return list(x)


def padded(nt: torch.Tensor, width: int | None = None) -> torch.Tensor:
    """Right-padded ``(bs, width)`` tensor of a nested one (0 fill)."""
    if not nt.is_nested:
        return nt
    rows = list(nt.unbind())
    w = max((r.numel() for r in rows), default=0) if width is None else width
    out = torch.zeros(len(rows), w, dtype=nt.dtype)
    for i, r in enumerate(rows):
        out[i, : r.numel()] = r
    return out


def nested(rows: list[torch.Tensor]) -> torch.Tensor:
    return torch.nested.as_nested_tensor(rows, layout=torch.jagged)


def ig_input_fields(req: Any) -> dict[str, torch.Tensor]:
    """The nested per-row fields the engine reads (``igpo.verl.engine.IG_INPUT_FIELDS``)."""
    return {
        "igpo_prefix_ends": nested([torch.tensor(p, dtype=torch.long) for p in req.prefix_ends]),
        "igpo_copy_ids": nested([c.long() for c in req.copy_ids]),
        "igpo_score_mask": nested([m.long() for m in req.score_mask]),
    }


class IGPOTrainer(PPOTrainerSync):
    """verl's synchronous V1 trainer with IGPO's information gain (see the module docstring)."""

    _igpo_state: dict[str, Any]

    @property
    def igpo(self) -> dict[str, Any]:
        return igpo_settings(self.config.algorithm)

    def _ig_on(self) -> bool:
        return self.igpo["ig_source"] == "recompute"

    def _check_ig_config(self) -> None:
        rc = self.config.algorithm.get("rollout_correction", None)
        if rc is not None and rc.get("bypass_mode", False):
            raise ValueError(
                "algorithm.igpo.ig_source=recompute needs the old-log-prob recompute, but "
                "algorithm.rollout_correction.bypass_mode=true skips it; disable bypass_mode or set ig_source=none"
            )

    def _step_once(self, metrics: dict, timing_raw: dict, sample_batch_size: int) -> KVBatchMeta:
        """verl's step (+ ``igpo/ig_time_share``); a batch in which every rollout failed stops the job
        with what to look at."""
        t0 = time.perf_counter()
        try:
            batch = super()._step_once(metrics, timing_raw, sample_batch_size)
            metrics.update(ig_time_share(metrics, time.perf_counter() - t0))
            return batch
        except RuntimeError as e:
            if "no materializable trajectories" not in str(e):
                raise
            raise RuntimeError(
                f"IGPO: every rollout of step {getattr(self, 'global_steps', '?')} failed in the agent loop "
                f"({e}). The cause of each is logged above as 'Error in _run_prompt' by verl's agent-loop "
                "workers; typical ones: a data row without reward_model.ground_truth, a prompt over "
                "data.max_prompt_length, the search handler gone (IGPO_HANDLER_URLS)."
            ) from e

    def _init_dataloader(self) -> None:
        """verl's dataloaders, then the answer-template check (before any worker or rollout starts)."""
        super()._init_dataloader()
        if self._ig_on():
            answers = dataset_answers(self.train_dataset)
            check_answer_template(
                self.tokenizer, self.igpo["answer_template"], answers, "algorithm.igpo.answer_template"
            )

    # -- step 4: old log-probs with answer copies ------------------------------------------------

    def _compute_old_log_prob(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        self._igpo_state = {"driver": 0.0}
        if not self._ig_on():
            return super()._compute_old_log_prob(batch, metrics)
        self._check_ig_config()
        t0 = time.perf_counter()
        data = tq.kv_batch_get(
            keys=batch.keys,
            partition_id=batch.partition_id,
            select_fields=["prompts", "responses", "extra_fields"],
        )
        prompt_lens = data["prompts"].offsets().diff().tolist()
        response_lens = data["responses"].offsets().diff().tolist()
        is_padding = [bool(t.get("is_padding", False)) for t in batch.tags]
        req = ig_request(
            prompt_lens,
            response_lens,
            to_list(data["extra_fields"]),
            self.tokenizer,
            self.igpo["answer_template"],
            is_padding=is_padding,
            dummy_token_id=int(self.tokenizer.eos_token_id or 0),
        )
        tq.kv_batch_put(
            keys=batch.keys,
            partition_id=batch.partition_id,
            fields=TensorDict(ig_input_fields(req), batch_size=len(batch)),
        )
        counts = copy_token_counts(req.prefix_ends, req.score_mask)
        copy_tokens = sum(c for c, a in zip(counts, req.active, strict=True) if a)
        self._igpo_state.update(
            active=req.active,
            copy_tokens=copy_tokens,
            seq_lens=[p + r for p, r in zip(prompt_lens, response_lens, strict=True)],
        )
        self._igpo_state["driver"] += time.perf_counter() - t0
        batch.extra_info[IG_FLAG] = True
        try:
            return super()._compute_old_log_prob(batch, metrics)
        finally:
            batch.extra_info.pop(IG_FLAG, None)  # the ref / update forwards never see the copies

    # -- step 7: IG into token_level_rewards, verl's advantage, metrics --------------------------

    def _compute_advantage(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        state = getattr(self, "_igpo_state", {"driver": 0.0})
        ig_on = self._ig_on()
        t0 = time.perf_counter()
        fields = ["rm_scores", "response_mask", "uid", "extra_fields"]
        if ig_on:
            fields += ["igpo_answer_lp", "igpo_ig_time_s"]
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=fields)
        nested_mask = data["response_mask"]
        rm_nested = data["rm_scores"]
        width = int(nested_mask.offsets().diff().max())
        rm = padded(rm_nested, width)
        mask = padded(nested_mask, width)
        active = state.get("active") or [not t.get("is_padding", False) for t in batch.tags]
        answer_lp = list(data["igpo_answer_lp"].unbind()) if ig_on else None
        tlr, _ = rewards_with_ig(rm, mask, answer_lp, active, self.igpo["ig_basis"])
        tlr_nested = nested([tlr[i, : int(n)] for i, n in enumerate(nested_mask.offsets().diff().tolist())])
        if ig_on:
            tq.kv_batch_put(
                keys=batch.keys,
                partition_id=batch.partition_id,
                fields=TensorDict({"rm_scores": tlr_nested}, batch_size=len(batch)),
            )
        state["driver"] += time.perf_counter() - t0
        try:
            batch = super()._compute_advantage(batch, metrics)
        finally:
            if ig_on:  # the reported score stays the outcome reward
                tq.kv_batch_put(
                    keys=batch.keys,
                    partition_id=batch.partition_id,
                    fields=TensorDict(
                        {"rm_scores": rm_nested, "token_level_rewards": tlr_nested}, batch_size=len(batch)
                    ),
                )
        adv = padded(
            tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["advantages"])[
                "advantages"
            ],
            width,
        )
        timings = None
        if ig_on:
            engine_s = float(padded(data["igpo_ig_time_s"]).sum())
            dp = max(int(getattr(self, "_igpo_dp_size", 1)), 1)
            timings = {"driver": state["driver"], "engine": engine_s / dp}
        metrics.update(
            igpo_step_metrics(
                tlr,
                mask,
                np.asarray(to_list(data["uid"]), dtype=object),
                adv,
                to_list(data["extra_fields"]),
                answer_lp=answer_lp,
                active=active,
                seq_lens=state.get("seq_lens"),
                copy_tokens=state.get("copy_tokens"),
                timings=timings,
            )
        )
        return batch

    def _balance_batch(
        self, batch: KVBatchMeta, metrics, logging_prefix="global_seqlen", keep_minibatch=False
    ):
        out = super()._balance_batch(
            batch, metrics, logging_prefix=logging_prefix, keep_minibatch=keep_minibatch
        )
        dp_info = self.actor_rollout_wg._dispatch_info.get("actor")
        if dp_info is not None:
            self._igpo_dp_size = max(dp_info) + 1
        return out


def install_trainer() -> None:
    """Make ``trainer.v1.trainer_mode=sync`` build :class:`IGPOTrainer` in this process.

    verl's ``register_trainer`` refuses a taken name, and ``sync`` is taken by ``PPOTrainerSync``,
    our base class; so the registry entry is replaced directly. Call it only in the process that
    runs the trainer (the task runner): elsewhere ``sync`` keeps meaning verl's own trainer.
    """
    TRAINER_REGISTRY[TRAINER_MODE] = IGPOTrainer
